#include "tests/bench/engine_alone.h"

#include <signal.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

#include "os/child_process.h"
#include "tests/bench/keepalive_load.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

namespace ensemble::bench {

using namespace ensemble::testing;
using Ms = std::chrono::duration<double, std::milli>;

std::string first_answer_body(const std::string& model, bool stream) {
    nlohmann::json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                           {"max_tokens", 1},
                           {"stream", stream}};
    if (!model.empty()) body["model"] = model;
    return body.dump();
}

double until_answered(unsigned short port, Clock::time_point since) {
    auto request = chat_request(first_answer_body("", false));
    request.timeout = std::chrono::milliseconds(30000);
    while (http_request(port, request).status != 200)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return Ms(Clock::now() - since).count();
}

double engine_alone_ms(const std::string& model, bool until_chat,
                       const std::filesystem::path& log_file,
                       const std::vector<std::string>& args) {
    const auto port = free_port();
    SpawnSpec spec;
    spec.argv = {llama_server().string(),
                 "--model",
                 model,
                 "--host",
                 "127.0.0.1",
                 "--port",
                 std::to_string(port),
                 "--ctx-size",
                 "2048",
                 "--parallel",
                 "1",
                 "--alias",
                 "tiny"};
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    spec.log_file = log_file;
    const auto start = Clock::now();
    auto child = ChildProcess::spawn(spec);
    if (!child) throw std::runtime_error(child.error().message);
    double ms = 0;
    if (until_chat) {
        ms = until_answered(port, start);
    } else {
        HttpRequest health;
        health.target = "/health";
        health.timeout = std::chrono::milliseconds(500);
        while (http_request(port, health).status != 200)
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        ms = Ms(Clock::now() - start).count();
    }
    (*child)->signal_group(SIGTERM);
    while (!(*child)->poll_exit())
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return ms;
}

void print_against_engine(const std::string& alone_name, const std::vector<double>& alone,
                          const std::string& measured_name, const std::vector<double>& measured) {
    std::printf("| path | p50 ms | min ms | max ms |\n|---|---|---|---|\n");
    for (const auto& [name, values] : {std::pair{&alone_name, &alone}, {&measured_name, &measured}})
        std::printf("| %s | %.1f | %.1f | %.1f |\n", name->c_str(), percentile(*values, 0.5),
                    percentile(*values, 0), percentile(*values, 1));
    std::printf("| **overhead (p50 difference)** | **%+.1f** | | |\n\n",
                percentile(measured, 0.5) - percentile(alone, 0.5));
}

}  // namespace ensemble::bench
