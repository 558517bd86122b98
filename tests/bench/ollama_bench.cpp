// Ollama's API against the OpenAI API on the same worker and engine, interleaved in one run: what
// the translation (worker/ollama_api.h) costs a streamed answer — time to first token and time
// per token — and a whole answer's latency. Not a pass/fail test; numbers go to
// docs/BENCHMARKS.md.   ensemble-ollama-bench --model M.gguf [--rounds N] [--tokens T]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "tests/bench/answer_timing.h"
#include "tests/bench/keepalive_load.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble;
using namespace ensemble::testing;
using ensemble::bench::AnswerTimes;
using ensemble::bench::measure_answer;
using ensemble::bench::percentile;
using Clock = std::chrono::steady_clock;

namespace {

struct Route {
    const char* name;
    const char* target;
    const char* token_marker;  // one per token event in the stream
};

constexpr Route kRoutes[] = {
    {"OpenAI /v1/chat/completions", "/v1/chat/completions", "\"content\":\""},
    {"Ollama /api/chat", "/api/chat", "\"done\":false"},
};

std::string body(const Route& route, int tokens, bool stream) {
    const nlohmann::json messages = {{{"role", "user"}, {"content", "Tell me a story."}}};
    if (std::string_view(route.target) == "/api/chat") {
        return nlohmann::json{{"model", "bench"},
                              {"messages", messages},
                              {"stream", stream},
                              {"options", {{"num_predict", tokens}}}}
            .dump();
    }
    return nlohmann::json{
        {"model", "bench"}, {"messages", messages}, {"max_tokens", tokens}, {"stream", stream}}
        .dump();
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Ollama's API against the OpenAI API on the same worker"};
    std::string model;
    int rounds = 30;
    int tokens = 32;
    std::vector<std::string> engine_args;
    app.add_option("--model", model, "GGUF model to serve")->required();
    app.add_option("--rounds", rounds, "requests per route")->capture_default_str();
    app.add_option("--tokens", tokens, "tokens generated per request")->capture_default_str();
    app.add_option("--engine-arg", engine_args, "extra llama-server argument (repeatable)");
    CLI11_PARSE(app, argc, argv);
    std::vector<std::string> worker_args{"--model", model, "--handle", "bench"};
    for (const auto& a : engine_args)
        worker_args.insert(worker_args.end(), {"--engine-arg", a});
    WorkerProcess worker(free_port(), worker_args, "ollama_bench");
    if (!worker.wait_ready(std::chrono::minutes(5))) {
        std::cerr << "worker did not become ready:\n" << worker.log();
        return 1;
    }
    std::vector<AnswerTimes> series(std::size(kRoutes));
    for (int r = 0; r < rounds + 2; ++r) {  // the first two warm the engine's cache, not counted
        for (std::size_t k = 0; k < std::size(kRoutes); ++k) {
            const auto at = (k + static_cast<std::size_t>(r)) % std::size(kRoutes);
            AnswerTimes scratch;
            const auto& route = kRoutes[at];
            measure_answer(worker.port(), route.target, route.token_marker,
                           body(route, tokens, true), body(route, tokens, false),
                           r < 2 ? scratch : series[at]);
        }
    }
    std::printf("| route | TTFT p50 ms | per token p50 ms | whole answer p50 ms | failures |\n");
    std::printf("|---|---|---|---|---|\n");
    for (std::size_t k = 0; k < std::size(kRoutes); ++k) {
        const auto& s = series[k];
        std::printf("| %s | %.3f | %.4f | %.3f | %d |\n", kRoutes[k].name,
                    percentile(s.ttft_ms, 0.5), percentile(s.per_token_ms, 0.5),
                    percentile(s.whole_ms, 0.5), s.failures);
    }
    const auto ratio = [&](const std::vector<double> AnswerTimes::*field) {
        return percentile(series[1].*field, 0.5) / percentile(series[0].*field, 0.5);
    };
    std::printf("\nOllama / OpenAI: TTFT %.3fx, per token %.3fx, whole answer %.3fx\n",
                ratio(&AnswerTimes::ttft_ms), ratio(&AnswerTimes::per_token_ms),
                ratio(&AnswerTimes::whole_ms));
    return 0;
}
