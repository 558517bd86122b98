// Proxy overhead benchmark: the same llama-server measured directly, through ensemble-worker,
// through nginx and (on Linux) through the byte relay, interleaved in one run. The worker's own
// engine is the one measured directly, on its private Unix socket (where it listens under
// ensembled too), and nginx and the relay pass to that same socket, so all paths share one
// process, one model and one cache. The relay parses nothing: the floor, which tells how much
// any proxy design could win over nginx on this machine. Three parts:
//   streamed: time to first token (p50/p99), the time per token after the first (how much a
//     proxy delays each token it relays) and tokens/s, a new connection per request;
//   keep-alive load: 1-token completions back to back on kept-alive connections (as a gateway
//     sends them), p50 latency and requests/s at each concurrency;
//   large body: the same with a 1 MB request body, at concurrency 1.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/bench/keepalive_load.h"
#include "tests/bench/process_cost.h"
#include "tests/bench/reference_fronts.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble;
using namespace ensemble::testing;
using ensemble::bench::percentile;
using Clock = std::chrono::steady_clock;

namespace {

struct Sample {
    double ttft_ms = 0;
    int tokens = 0;
    double ms_per_token = 0;  // from the first token to the last, over the tokens between
};

struct Batch {
    std::vector<Sample> samples;
    double wall_s = 0;
};

struct Series {
    std::vector<double> ttft_ms;
    std::vector<double> ms_per_token;        // one per stream of more than one token
    std::vector<double> batch_ms_per_token;  // one per batch: the median of its streams'
    std::vector<double> tokens_per_s;  // one per batch: all tokens of the batch over its wall time
    int failures = 0;
};

Sample stream_once(const StreamEndpoint& target, int max_tokens, int& failures) {
    const auto body = nlohmann::json{
        {"model", "bench"},
        {"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
        {"max_tokens", max_tokens},
        {"ignore_eos", true},
        {"stream", true}}.dump();
    Sample s;
    const auto start = Clock::now();
    bool first = true;
    Clock::time_point first_at, last_at;
    auto r = http_request(target, chat_request(body, true), [&](std::string_view chunk) {
        for (auto pos = chunk.find("\"content\":\""); pos != std::string_view::npos;
             pos = chunk.find("\"content\":\"", pos + 1)) {
            last_at = Clock::now();
            if (first) {
                first_at = last_at;
                s.ttft_ms = std::chrono::duration<double, std::milli>(first_at - start).count();
                first = false;
            }
            ++s.tokens;
        }
        return true;
    });
    if (s.tokens > 1) {
        s.ms_per_token =
            std::chrono::duration<double, std::milli>(last_at - first_at).count() / (s.tokens - 1);
    }
    if (r.status != 200 || !r.complete || first) {
        ++failures;
        std::fprintf(stderr, "failed: status %d complete %d error \"%s\" body %.200s\n", r.status,
                     r.complete ? 1 : 0, r.error.c_str(), r.body.c_str());
    }
    return s;
}

Batch run_batch(const StreamEndpoint& target, int concurrency, int max_tokens, int& failures) {
    Batch b;
    b.samples.resize(static_cast<std::size_t>(concurrency));
    std::vector<int> fails(static_cast<std::size_t>(concurrency), 0);
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int i = 0; i < concurrency; ++i) {
        threads.emplace_back([&, i] { b.samples[i] = stream_once(target, max_tokens, fails[i]); });
    }
    for (auto& t : threads)
        t.join();
    b.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    for (int f : fails)
        failures += f;
    return b;
}

void add(Series& s, const Batch& b) {
    int tokens = 0;
    std::vector<double> per_token;
    for (const auto& x : b.samples) {
        s.ttft_ms.push_back(x.ttft_ms);
        if (x.tokens > 1) per_token.push_back(x.ms_per_token);
        tokens += x.tokens;
    }
    s.ms_per_token.insert(s.ms_per_token.end(), per_token.begin(), per_token.end());
    s.batch_ms_per_token.push_back(percentile(per_token, 0.5));
    s.tokens_per_s.push_back(tokens / b.wall_s);
}

// The paths, in this order.
constexpr std::size_t kNginx = 1, kWorker = 2, kRelay = 3;
struct Path {
    const char* name;
    StreamEndpoint endpoint;
    pid_t proxy = 0;  // the process in the path, whose cost is measured (none for direct)
};

// Runs `each` once per path per round, rotating which path goes first so drift affects all alike.
template <typename F>
void interleaved(const std::vector<Path>& paths, int rounds, F each) {
    for (int r = 0; r < rounds; ++r) {
        for (std::size_t k = 0; k < paths.size(); ++k)
            each((k + static_cast<std::size_t>(r)) % paths.size());
    }
}

std::string completion_body(int max_tokens, std::size_t padding_bytes) {
    nlohmann::json body{{"model", "bench"},
                        {"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
                        {"max_tokens", max_tokens},
                        {"ignore_eos", true}};
    // A field the engine ignores, to make the body large without making the prompt long.
    if (padding_bytes > 0) body["padding"] = std::string(padding_bytes, 'x');
    return body.dump();
}

struct LoadSeries {
    std::vector<double> p50_ms;  // one per round
    std::vector<double> requests_per_s;
    std::vector<double> cpu_us_per_request;  // the proxy's
    std::vector<double> preempted_per_request;
    int errors = 0;
};

// The median of `values` with a distribution-free 95 % confidence interval (order statistics;
// with fewer than 6 values it spans all of them).
struct MedianEstimate {
    double median = 0, low = 0, high = 0;
};
MedianEstimate median_with_interval(std::vector<double> values) {
    if (values.empty()) return {};
    std::sort(values.begin(), values.end());
    const auto n = static_cast<double>(values.size());
    const auto k =
        static_cast<std::size_t>(std::max(0.0, std::floor((n - 1.96 * std::sqrt(n)) / 2)));
    return {percentile(values, 0.5), values[k], values[values.size() - 1 - k]};
}

nlohmann::json report_load(const std::vector<Path>& paths, const std::vector<LoadSeries>& series,
                           const std::string& label) {
    nlohmann::json out = nlohmann::json::object();
    const double direct_p50 = percentile(series[0].p50_ms, 0.5);
    const double direct_rps = percentile(series[0].requests_per_s, 0.5);
    for (std::size_t k = 0; k < paths.size(); ++k) {
        const double p50 = percentile(series[k].p50_ms, 0.5);
        const double rps = percentile(series[k].requests_per_s, 0.5);
        const double cpu_us = percentile(series[k].cpu_us_per_request, 0.5);
        const double preempted = percentile(series[k].preempted_per_request, 0.5);
        std::printf("| %s | %s | %.3f | %+.3f | %.0f | %.1f%% | %.1f | %.2f | %d |\n",
                    label.c_str(), paths[k].name, p50, p50 - direct_p50, rps,
                    100 * rps / direct_rps, cpu_us, preempted, series[k].errors);
        out[paths[k].name] = {{"p50_ms_median", p50},
                              {"added_p50_ms", p50 - direct_p50},
                              {"requests_per_s_median", rps},
                              {"throughput_vs_direct", rps / direct_rps},
                              {"proxy_cpu_us_per_request", cpu_us},
                              {"proxy_preempted_per_request", preempted},
                              {"errors", series[k].errors}};
    }
    // Paths against each other, paired by round (they ran one after the other): the engine's
    // drift between rounds, larger than the difference sought, cancels out.
    const auto paired = [&](std::size_t a, std::size_t b, const char* a_name, const char* b_name) {
        std::vector<double> latency_diff, throughput_ratio;
        for (std::size_t r = 0; r < series[0].p50_ms.size(); ++r) {
            latency_diff.push_back(series[a].p50_ms[r] - series[b].p50_ms[r]);
            throughput_ratio.push_back(series[a].requests_per_s[r] / series[b].requests_per_s[r]);
        }
        const auto latency = median_with_interval(latency_diff);
        const auto throughput = median_with_interval(throughput_ratio);
        std::printf(
            "| %s | %s against %s, paired by run: median [95%% interval] | | "
            "%+.3f [%+.3f, %+.3f] | | %.1f%% [%.1f, %.1f] | | | |\n",
            label.c_str(), a_name, b_name, latency.median, latency.low, latency.high,
            100 * throughput.median, 100 * throughput.low, 100 * throughput.high);
        const std::string key = std::string(a_name) + "_" + b_name;
        out[key + "_p50_ms_difference"] = {
            {"median", latency.median}, {"low", latency.low}, {"high", latency.high}};
        out[key + "_requests_per_s_ratio"] = {
            {"median", throughput.median}, {"low", throughput.low}, {"high", throughput.high}};
    };
    paired(kWorker, kNginx, "worker", "nginx");
    if (series.size() > kRelay) {
        paired(kRelay, kNginx, "relay", "nginx");
        paired(kWorker, kRelay, "worker", "relay");
    }
    std::fflush(stdout);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model;
    std::vector<int> concurrencies{1, 8};
    std::vector<int> load_concurrencies{1, 8, 32};
    int rounds = 20;
    int load_rounds = 10;
    double load_seconds = 2;
    int max_tokens = 32;
    int context = 4096;
    std::string json_out;
    std::vector<std::string> engine_args;
    CLI::App app{"Proxy overhead of ensemble-worker and nginx against direct llama-server"};
    app.add_option("--model", model, "GGUF model to serve")->required();
    app.add_option("--concurrency", concurrencies, "concurrent streams per batch")
        ->capture_default_str();
    app.add_option("--rounds", rounds, "streamed batches per path and concurrency (0: skip them)")
        ->capture_default_str();
    app.add_option("--tokens", max_tokens, "tokens generated per streamed request")
        ->capture_default_str();
    app.add_option("--load-concurrency", load_concurrencies,
                   "kept-alive connections in the load part (0 alone: skip it)")
        ->capture_default_str();
    app.add_option("--load-rounds", load_rounds, "load runs per path and concurrency")
        ->capture_default_str();
    app.add_option("--load-seconds", load_seconds, "length of one load run")->capture_default_str();
    app.add_option("--context", context, "engine context size")->capture_default_str();
    app.add_option("--json", json_out, "also write the results here");
    app.add_option("--engine-arg", engine_args, "extra llama-server argument (repeatable)");
    CLI11_PARSE(app, argc, argv);

    const int slots =
        std::max(*std::max_element(concurrencies.begin(), concurrencies.end()),
                 *std::max_element(load_concurrencies.begin(), load_concurrencies.end()));
    std::vector<std::string> worker_args{"--model",    model,
                                         "--handle",   "bench",
                                         "--parallel", std::to_string(slots),
                                         "--context",  std::to_string(context * slots / 8)};
    for (const auto& a : engine_args)
        worker_args.insert(worker_args.end(), {"--engine-arg", a});
    WorkerProcess worker(free_port(), worker_args, "proxy_bench");
    if (!worker.wait_ready(std::chrono::minutes(5))) {
        std::cerr << "worker did not become ready:\n" << worker.log();
        return 1;
    }
    const auto engine_socket = worker.socket_folder() / "engine.sock";
    bench::NginxFront nginx(free_port(), engine_socket, test_output_dir("proxy_bench") / "nginx");
    std::vector<Path> paths{
        {"direct llama-server", StreamEndpoint::unix_socket(engine_socket)},
        {"through nginx", StreamEndpoint::tcp(asio::ip::address_v4::loopback(), nginx.port()),
         nginx.worker_pid()},
        {"through ensemble-worker",
         StreamEndpoint::tcp(asio::ip::address_v4::loopback(), worker.port()), worker.pid()}};
#ifdef ENSEMBLE_BENCH_BYTE_RELAY_BIN
    bench::ByteRelayFront relay(free_port(), engine_socket,
                                test_output_dir("proxy_bench") / "byte-relay");
    paths.push_back({"through the byte relay (floor)",
                     StreamEndpoint::tcp(asio::ip::address_v4::loopback(), relay.port()),
                     relay.pid()});
#endif
    nlohmann::json results{{"streamed", nlohmann::json::array()},
                           {"keepalive", nlohmann::json::array()}};

    if (rounds > 0) {  // --rounds 0: the load part alone
        std::printf("## streamed, %d tokens, a new connection per request, %d rounds\n\n",
                    max_tokens, rounds);
        std::printf(
            "| concurrency | path | TTFT p50 ms | TTFT p99 ms | ms per token after the first "
            "(p50) | added µs per token | tokens/s (median) | vs direct | failures |\n");
        std::printf("|---|---|---|---|---|---|---|---|---|\n");
        for (int c : concurrencies) {
            std::vector<Series> series(paths.size());
            int warm = 0;
            for (const auto& path : paths)  // warm every path's connections and the cache
                run_batch(path.endpoint, c, max_tokens, warm);
            interleaved(paths, rounds, [&](std::size_t k) {
                add(series[k], run_batch(paths[k].endpoint, c, max_tokens, series[k].failures));
            });
            nlohmann::json row{{"concurrency", c}};
            const double direct_tps = percentile(series[0].tokens_per_s, 0.5);
            const double direct_per_token = percentile(series[0].ms_per_token, 0.5);
            for (std::size_t k = 0; k < paths.size(); ++k) {
                const auto& s = series[k];
                const double tps = percentile(s.tokens_per_s, 0.5);
                const double per_token = percentile(s.ms_per_token, 0.5);
                std::printf("| %d | %s | %.2f | %.2f | %.3f | %+.1f | %.1f | %.1f%% | %d |\n", c,
                            paths[k].name, percentile(s.ttft_ms, 0.5), percentile(s.ttft_ms, 0.99),
                            per_token, 1000 * (per_token - direct_per_token), tps,
                            100 * tps / direct_tps, s.failures);
                row[paths[k].name] = {{"ttft_p50_ms", percentile(s.ttft_ms, 0.5)},
                                      {"ttft_p99_ms", percentile(s.ttft_ms, 0.99)},
                                      {"ms_per_token_p50", per_token},
                                      {"tokens_per_s_median", tps},
                                      {"failures", s.failures}};
            }
            // Each proxy's delay per token against direct, paired by round (the paths of a round
            // ran one after the other, so the engine's drift cancels out).
            for (const std::size_t k : {kNginx, kWorker}) {
                std::vector<double> added_us;
                for (std::size_t r = 0; r < series[0].batch_ms_per_token.size(); ++r) {
                    added_us.push_back(
                        1000 * (series[k].batch_ms_per_token[r] - series[0].batch_ms_per_token[r]));
                }
                const auto added = median_with_interval(added_us);
                std::printf(
                    "| %d | %s, added µs per token, paired by round: median [95%% "
                    "interval] | | | | %+.1f [%+.1f, %+.1f] | | | |\n",
                    c, paths[k].name, added.median, added.low, added.high);
                row[std::string(paths[k].name) + "_added_us_per_token"] = {
                    {"median", added.median}, {"low", added.low}, {"high", added.high}};
            }
            results["streamed"].push_back(row);
            std::fflush(stdout);
        }
    }

    const auto load_duration = std::chrono::milliseconds(static_cast<long>(load_seconds * 1000));
    auto measure = [&](const std::string& request, int c, const std::string& label) {
        std::vector<LoadSeries> series(paths.size());
        for (const auto& path : paths)  // warm up
            bench::run_keepalive_load(path.endpoint, request, c, std::chrono::milliseconds(300));
        interleaved(paths, load_rounds, [&](std::size_t k) {
            const auto before =
                paths[k].proxy != 0 ? bench::process_cost(paths[k].proxy) : bench::ProcessCost{};
            const auto r = bench::run_keepalive_load(paths[k].endpoint, request, c, load_duration);
            const auto cost = paths[k].proxy != 0 ? bench::process_cost(paths[k].proxy) - before
                                                  : bench::ProcessCost{};
            const auto requests = std::max<double>(1, static_cast<double>(r.latencies_ms.size()));
            series[k].cpu_us_per_request.push_back(static_cast<double>(cost.cpu_ns) / 1000 /
                                                   requests);
            series[k].preempted_per_request.push_back(
                static_cast<double>(cost.involuntary_switches) / requests);
            series[k].p50_ms.push_back(percentile(r.latencies_ms, 0.5));
            series[k].requests_per_s.push_back(r.requests_per_s());
            series[k].errors += r.errors;
        });
        return report_load(paths, series, label);
    };
    if (load_concurrencies != std::vector<int>{0}) {
        std::printf("\n## keep-alive load: 1-token completions, %d runs of %.1f s per path\n\n",
                    load_rounds, load_seconds);
        std::printf(
            "| connections | path | latency p50 ms | added p50 ms | requests/s (median) | vs "
            "direct | proxy CPU µs/request | proxy preempted/request | errors |\n");
        std::printf("|---|---|---|---|---|---|---|---|---|\n");
        const auto small = bench::raw_post("/v1/chat/completions", completion_body(1, 0));
        for (int c : load_concurrencies) {
            auto row = measure(small, c, std::to_string(c));
            row["concurrency"] = c;
            results["keepalive"].push_back(row);
        }
        const auto large = bench::raw_post("/v1/chat/completions", completion_body(1, 1024 * 1024));
        results["large_body"] = measure(large, 1, "1 (1 MB body)");
    }
    if (!json_out.empty()) std::ofstream(json_out) << results.dump(2) << '\n';
    worker.signal(SIGTERM);
    worker.wait_exit(std::chrono::seconds(30));
    return 0;
}
