// The front door (supervisor.front_door) against the model port it forwards to, in one run under
// one ensembled: what the extra hop costs a streamed answer (time to first token, per token) and
// a whole one, and keep-alive throughput at 8 connections; and a cold request's time to its first
// token (loaded on demand) against llama-server's own time from spawn to first answer. Not a
// pass/fail test; numbers go to docs/BENCHMARKS.md.
//   ensemble-front-door-bench --model M.gguf [--rounds N] [--tokens T] [--cold-rounds K]
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "supervisor/control_client.h"
#include "tests/bench/answer_timing.h"
#include "tests/bench/engine_alone.h"
#include "tests/bench/keepalive_load.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble;
using namespace ensemble::testing;
using namespace ensemble::bench;
using Ms = std::chrono::duration<double, std::milli>;

namespace {

std::string chat_body(const std::string& model, int tokens, bool stream) {
    const nlohmann::json messages = {{{"role", "user"}, {"content", "Tell me a story."}}};
    return nlohmann::json{
        {"model", model}, {"messages", messages}, {"max_tokens", tokens}, {"stream", stream}}
        .dump();
}

Result<nlohmann::json> call(const std::filesystem::path& socket, protocol::Verb verb, int port,
                            const std::string& model = "") {
    protocol::ControlRequest r;
    r.verb = verb;
    r.port = port;
    r.model = model;
    return call_supervisor(socket, r);
}

// Time from sending a streamed request to its first token event.
double first_token_ms(unsigned short port, const std::string& body) {
    auto request = chat_request(body, true);
    request.timeout = std::chrono::milliseconds(120000);
    const auto start = Clock::now();
    std::optional<Clock::time_point> first;
    const auto r = http_request(port, request, [&](std::string_view chunk) {
        if (!first && chunk.find("\"content\":\"") != std::string_view::npos) first = Clock::now();
        return true;
    });
    if (r.status != 200 || !first) {
        std::fprintf(stderr, "cold request: status %d: %.200s\n", r.status, r.body.c_str());
        return -1;
    }
    return Ms(*first - start).count();
}

}  // namespace

int main(int argc, char** argv) {
    std::string model;
    int rounds = 30;
    int tokens = 32;
    int cold_rounds = 10;
    int load_seconds = 5;
    std::vector<std::string> engine_args;
    CLI::App app{"the front door against the model port, and a cold request's first token"};
    app.add_option("--model", model, "GGUF model to serve")->required();
    app.add_option("--rounds", rounds, "requests per path")->capture_default_str();
    app.add_option("--tokens", tokens, "tokens generated per request")->capture_default_str();
    app.add_option("--cold-rounds", cold_rounds, "cold loads")->capture_default_str();
    app.add_option("--load-seconds", load_seconds, "seconds of keep-alive load per path and round")
        ->capture_default_str();
    app.add_option("--engine-arg", engine_args, "extra llama-server argument (repeatable)");
    CLI11_PARSE(app, argc, argv);
    model = std::filesystem::absolute(model).string();  // the config is written elsewhere

    const auto dir = test_output_dir("front_door_bench");
    const auto run_dir =
        std::filesystem::temp_directory_path() / ("ensfd-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir / "state");
    const auto ports = free_ports(3);
    const unsigned short warm_port = ports[0], door = ports[1], pool = ports[2];
    {
        std::string args;
        for (const auto& a : engine_args)
            args += (args.empty() ? "" : ", ") + nlohmann::json(a).dump();
        std::ofstream config(dir / "ensemble.yaml");
        config << "supervisor:\n  state_dir: " << (dir / "state").string()
               << "\n  run_dir: " << run_dir.string()
               << "\n  front_door:\n    listen: 127.0.0.1:" << door << "\n    ports: [" << pool
               << "]\n"
               << "engines:\n  llama:\n    preset: llama.cpp\n    binary: "
               << llama_server().string() << "\n    args: [" << args << "]\n"
               << "models:\n  warm: {engine: llama, path: " << model
               << ", context: 2048, parallel: 1}\n"
               << "  cold: {engine: llama, path: " << model
               << ", context: 2048, parallel: 1, on_demand: true}\n";
    }
    SpawnSpec spec;
    spec.argv = {ENSEMBLE_BENCH_ENSEMBLED_BIN, "--config", (dir / "ensemble.yaml").string(),
                 "--worker-bin", worker_binary().string()};
    spec.log_file = dir / "ensembled.log";
    auto supervisor = ChildProcess::spawn(spec);
    if (!supervisor) throw std::runtime_error(supervisor.error().message);
    const auto socket = run_dir / "control.sock";
    while (!call(socket, protocol::Verb::status, 0)) {
        if ((*supervisor)->poll_exit()) {
            std::fprintf(stderr, "ensembled exited; see %s\n", (dir / "ensembled.log").c_str());
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (auto loaded = call(socket, protocol::Verb::load, warm_port, "warm");
        !loaded || !loaded->value("ok", false)) {
        std::fprintf(stderr, "load failed; see %s\n", (dir / "ensembled.log").c_str());
        return 1;
    }
    while (http_request(door, chat_request(chat_body("warm", 1, false))).status != 200)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));

    // 1. One answer at a time, interleaved: the model port, then the front door.
    const std::pair<const char*, unsigned short> paths[] = {{"model port (direct)", warm_port},
                                                            {"front door", door}};
    std::vector<AnswerTimes> times(2);
    for (int r = 0; r < rounds + 2; ++r) {  // the first two warm up, not counted
        for (std::size_t k = 0; k < 2; ++k) {
            const auto at = (k + static_cast<std::size_t>(r)) % 2;
            AnswerTimes scratch;
            measure_answer(paths[at].second, "/v1/chat/completions", "\"content\":\"",
                           chat_body("warm", tokens, true), chat_body("warm", tokens, false),
                           r < 2 ? scratch : times[at]);
        }
    }
    std::printf("## one answer at a time, %d rounds, %d tokens\n\n", rounds, tokens);
    std::printf("| path | TTFT p50 ms | per token p50 ms | whole answer p50 ms | failures |\n");
    std::printf("|---|---|---|---|---|\n");
    for (std::size_t k = 0; k < 2; ++k) {
        std::printf("| %s | %.3f | %.4f | %.3f | %d |\n", paths[k].first,
                    percentile(times[k].ttft_ms, 0.5), percentile(times[k].per_token_ms, 0.5),
                    percentile(times[k].whole_ms, 0.5), times[k].failures);
    }
    const auto p50 = [&](std::size_t k, const std::vector<double> AnswerTimes::*field) {
        return percentile(times[k].*field, 0.5);
    };
    std::printf(
        "\nfront door / model port: TTFT %.3fx (%+.3f ms), per token %.3fx, whole answer %.3fx "
        "(%+.3f ms)\n\n",
        p50(1, &AnswerTimes::ttft_ms) / p50(0, &AnswerTimes::ttft_ms),
        p50(1, &AnswerTimes::ttft_ms) - p50(0, &AnswerTimes::ttft_ms),
        p50(1, &AnswerTimes::per_token_ms) / p50(0, &AnswerTimes::per_token_ms),
        p50(1, &AnswerTimes::whole_ms) / p50(0, &AnswerTimes::whole_ms),
        p50(1, &AnswerTimes::whole_ms) - p50(0, &AnswerTimes::whole_ms));

    // 2. Keep-alive throughput, 8 connections of 1-token completions, interleaved.
    const auto one_token = raw_post("/v1/chat/completions", chat_body("warm", 1, false));
    std::vector<LoadResult> load(2);
    for (int r = 0; r < 2; ++r) {
        for (std::size_t k = 0; k < 2; ++k) {
            const auto at = (k + static_cast<std::size_t>(r)) % 2;
            auto got = run_keepalive_load(
                StreamEndpoint::tcp(asio::ip::address_v4::loopback(), paths[at].second), one_token,
                8, std::chrono::seconds(load_seconds));
            load[at].latencies_ms.insert(load[at].latencies_ms.end(), got.latencies_ms.begin(),
                                         got.latencies_ms.end());
            load[at].seconds += got.seconds;
            load[at].errors += got.errors;
        }
    }
    std::printf("## 8 connections, 1-token completions, 2 x %d s per path\n\n", load_seconds);
    std::printf("| path | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n");
    for (std::size_t k = 0; k < 2; ++k) {
        std::printf("| %s | %.0f | %.3f | %.3f | %d |\n", paths[k].first, load[k].requests_per_s(),
                    percentile(load[k].latencies_ms, 0.5), percentile(load[k].latencies_ms, 0.99),
                    load[k].errors);
    }
    std::printf("\nfront door / model port: throughput %.3fx\n\n",
                load[1].requests_per_s() / load[0].requests_per_s());

    // 3. Cold: a request for a model no port serves, to its first token, against llama-server's
    // own spawn to first answer; interleaved, the on-demand load unloaded before each round.
    std::vector<double> alone, cold;
    for (int r = 0; r < cold_rounds; ++r) {
        // The same engine arguments as the supervised one.
        alone.push_back(engine_alone_ms(model, true, dir / "direct-engine.log", engine_args));
        (void)call(socket, protocol::Verb::unload, pool);
        // The request llama-server alone is timed with, streamed: to its one token.
        const auto body = first_answer_body("cold", true);
        const double ms = first_token_ms(door, body);
        if (ms >= 0) cold.push_back(ms);
    }
    std::printf("## a cold request to its first token, %d rounds\n\n", cold_rounds);
    print_against_engine("llama-server alone (spawn -> first chat answer)", alone,
                         "front door, loaded on demand (request -> first token)", cold);
    (*supervisor)->signal_group(SIGTERM);
    while (!(*supervisor)->poll_exit())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::filesystem::remove_all(run_dir);
    return 0;
}
