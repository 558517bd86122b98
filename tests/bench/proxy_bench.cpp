// Proxy overhead benchmark: the same llama-server measured directly and through ensemble-worker,
// interleaved in one run. The worker's own engine is the one measured directly, on its private
// Unix socket (where it listens under ensembled too), so both paths share one process, one model
// and one cache. Reports time to first token (p50/p99) and streamed tokens/s at each concurrency.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble;
using namespace ensemble::testing;
using Clock = std::chrono::steady_clock;

namespace {

struct Sample {
    double ttft_ms = 0;
    int tokens = 0;
};

struct Batch {
    std::vector<Sample> samples;
    double wall_s = 0;
};

struct Series {
    std::vector<double> ttft_ms;
    std::vector<double> tokens_per_s;  // one per batch: all tokens of the batch over its wall time
    int failures = 0;
};

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

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
    auto r = http_request(target, chat_request(body, true), [&](std::string_view chunk) {
        for (auto pos = chunk.find("\"content\":\""); pos != std::string_view::npos;
             pos = chunk.find("\"content\":\"", pos + 1)) {
            if (first) {
                s.ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
                first = false;
            }
            ++s.tokens;
        }
        return true;
    });
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
    for (const auto& x : b.samples) {
        s.ttft_ms.push_back(x.ttft_ms);
        tokens += x.tokens;
    }
    s.tokens_per_s.push_back(tokens / b.wall_s);
}

}  // namespace

int main(int argc, char** argv) {
    std::string model;
    std::vector<int> concurrencies{1, 8};
    int rounds = 20;
    int max_tokens = 32;
    int context = 4096;
    std::string json_out;
    std::vector<std::string> engine_args;
    CLI::App app{"Proxy overhead of ensemble-worker against direct llama-server"};
    app.add_option("--model", model, "GGUF model to serve")->required();
    app.add_option("--concurrency", concurrencies, "concurrent streams per batch")
        ->capture_default_str();
    app.add_option("--rounds", rounds, "batches per path and concurrency")->capture_default_str();
    app.add_option("--tokens", max_tokens, "tokens generated per request")->capture_default_str();
    app.add_option("--context", context, "engine context size")->capture_default_str();
    app.add_option("--json", json_out, "also write the results here");
    app.add_option("--engine-arg", engine_args, "extra llama-server argument (repeatable)");
    CLI11_PARSE(app, argc, argv);

    const int slots = *std::max_element(concurrencies.begin(), concurrencies.end());
    std::vector<std::string> worker_args{"--model",    model,
                                         "--handle",   "bench",
                                         "--parallel", std::to_string(slots),
                                         "--context",  std::to_string(context)};
    for (const auto& a : engine_args)
        worker_args.insert(worker_args.end(), {"--engine-arg", a});
    WorkerProcess worker(free_port(), worker_args, "proxy_bench");
    if (!worker.wait_ready(std::chrono::minutes(5))) {
        std::cerr << "worker did not become ready:\n" << worker.log();
        return 1;
    }
    const auto direct = StreamEndpoint::unix_socket(worker.socket_folder() / "engine.sock");
    const auto through_worker =
        StreamEndpoint::tcp(asio::ip::address_v4::loopback(), worker.port());
    nlohmann::json results = nlohmann::json::array();
    std::printf(
        "| concurrency | path | TTFT p50 ms | TTFT p99 ms | tokens/s (median) | failures |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (int c : concurrencies) {
        Series d, p;
        int warm = 0;
        run_batch(direct, c, max_tokens, warm);  // warm both paths' connections and the cache
        run_batch(through_worker, c, max_tokens, warm);
        for (int r = 0; r < rounds; ++r) {
            // Alternate which path goes first so drift affects both alike.
            if (r % 2 == 0) {
                add(d, run_batch(direct, c, max_tokens, d.failures));
                add(p, run_batch(through_worker, c, max_tokens, p.failures));
            } else {
                add(p, run_batch(through_worker, c, max_tokens, p.failures));
                add(d, run_batch(direct, c, max_tokens, d.failures));
            }
        }
        for (auto* s : {&d, &p}) {
            const char* name = s == &d ? "direct llama-server" : "through ensemble-worker";
            std::printf("| %d | %s | %.2f | %.2f | %.1f | %d |\n", c, name,
                        percentile(s->ttft_ms, 0.5), percentile(s->ttft_ms, 0.99),
                        percentile(s->tokens_per_s, 0.5), s->failures);
        }
        const double overhead = percentile(p.ttft_ms, 0.5) - percentile(d.ttft_ms, 0.5);
        const double ratio = percentile(p.tokens_per_s, 0.5) / percentile(d.tokens_per_s, 0.5);
        std::printf("| %d | **worker vs direct** | %+.2f ms | %+.2f ms | %.1f%% | |\n", c, overhead,
                    percentile(p.ttft_ms, 0.99) - percentile(d.ttft_ms, 0.99), ratio * 100);
        results.push_back({{"concurrency", c},
                           {"direct",
                            {{"ttft_p50_ms", percentile(d.ttft_ms, 0.5)},
                             {"ttft_p99_ms", percentile(d.ttft_ms, 0.99)},
                             {"tokens_per_s_median", percentile(d.tokens_per_s, 0.5)},
                             {"failures", d.failures}}},
                           {"worker",
                            {{"ttft_p50_ms", percentile(p.ttft_ms, 0.5)},
                             {"ttft_p99_ms", percentile(p.ttft_ms, 0.99)},
                             {"tokens_per_s_median", percentile(p.tokens_per_s, 0.5)},
                             {"failures", p.failures}}},
                           {"ttft_p50_overhead_ms", overhead},
                           {"throughput_ratio", ratio}});
        std::fflush(stdout);
    }
    if (!json_out.empty()) std::ofstream(json_out) << results.dump(2) << '\n';
    worker.signal(SIGTERM);
    worker.wait_exit(std::chrono::seconds(30));
    return 0;
}
