// Supervisor benchmarks, each side by side with its reference in one run:
//  1. spawn-to-ready overhead: `ensemble load` until ready, against llama-server's own time from
//     spawn to /health 200 on the same model;
//  2. control round trip (status) with 32 workers on the fake engine, p50/p99;
//  3. resident memory of ensembled and of one worker without its engine;
//  4. recovery: kill -9 of the engine, and of the worker, to the port answering a chat request
//     again, against llama-server's own spawn-to-first-answer time on the same model.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "os/process_memory.h"
#include "supervisor/control_client.h"
#include "tests/bench/engine_alone.h"
#include "tests/bench/keepalive_load.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble;
using namespace ensemble::testing;
using ensemble::bench::engine_alone_ms;
using ensemble::bench::percentile;
using ensemble::bench::print_against_engine;
using ensemble::bench::until_answered;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::duration<double, std::milli>;

namespace {

std::uint64_t rss_bytes(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
}

Result<nlohmann::json> call(const std::filesystem::path& socket, protocol::Verb verb, int port = 0,
                            const std::string& model = "", const std::string& profile = "") {
    protocol::ControlRequest r;
    r.verb = verb;
    if (port) r.port = port;
    r.model = model;
    r.profile = profile;
    return call_supervisor(socket, r);
}

}  // namespace

int main(int argc, char** argv) {
    int rounds = 10;
    int fleet = 32;
    int status_calls = 2000;
    std::string fake_engine;
    CLI::App app{"ensembled benchmarks"};
    app.add_option("--rounds", rounds)->capture_default_str();
    app.add_option("--fleet", fleet, "workers on the fake engine")->capture_default_str();
    app.add_option("--status-calls", status_calls)->capture_default_str();
    app.add_option("--fake-engine", fake_engine)->required();
    CLI11_PARSE(app, argc, argv);

    const auto dir = test_output_dir("supervisor_bench");
    const auto run_dir =
        std::filesystem::temp_directory_path() / ("ensb-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir / "state");
    auto fleet_ports = free_ports(static_cast<std::size_t>(fleet) + 1);
    const unsigned short tiny_port = fleet_ports.back();
    fleet_ports.pop_back();
    {
        std::ofstream config(dir / "ensemble.yaml");
        config << "supervisor:\n  state_dir: " << (dir / "state").string()
               << "\n  run_dir: " << run_dir.string()
               << "\nengines:\n  llama:\n    preset: llama.cpp\n    binary: "
               << llama_server().string()
               << "\n    args: [--threads, \"1\"]\n  fake:\n    preset: command\n    command: \""
               << fake_engine << " --port {port} --model {handle}\"\n    ready_path: /health\n"
               << "models:\n  tiny: {engine: llama, path: " << tiny_model().string()
               << ", context: 2048, parallel: 1}\n  fake: {engine: fake, path: none}\nprofiles:\n  "
                  "fleet:\n";
        for (auto p : fleet_ports)
            config << "    " << p << ": fake\n";
    }
    SpawnSpec spec;
    spec.argv = {ENSEMBLE_BENCH_ENSEMBLED_BIN, "--config", (dir / "ensemble.yaml").string(),
                 "--worker-bin", worker_binary().string()};
    spec.log_file = dir / "ensembled.log";
    auto supervisor = ChildProcess::spawn(spec);
    if (!supervisor) throw std::runtime_error(supervisor.error().message);
    const auto socket = run_dir / "control.sock";
    while (!call(socket, protocol::Verb::status))
        std::this_thread::sleep_for(std::chrono::milliseconds(10));

    // 1. Spawn-to-ready, interleaved with the engine alone.
    std::vector<double> direct, supervised;
    for (int r = 0; r < rounds; ++r) {
        direct.push_back(engine_alone_ms(tiny_model().string(), false, dir / "direct-engine.log"));
        const auto start = Clock::now();
        auto reply = call(socket, protocol::Verb::load, tiny_port, "tiny");
        supervised.push_back(Ms(Clock::now() - start).count());
        if (!reply || !reply->value("ok", false))
            std::fprintf(stderr, "load failed: %s\n",
                         reply ? reply->dump().c_str() : reply.error().message.c_str());
        (void)call(socket, protocol::Verb::unload, tiny_port);
    }
    std::printf("## spawn to ready (tiny model, llama-server), %d rounds\n\n", rounds);
    print_against_engine("llama-server alone (spawn -> /health 200)", direct,
                         "`ensemble load` (request -> reply, ready)", supervised);

    // 4. Recovery, interleaved with the engine's own start. Each round starts from a fresh
    // worker (`restart`), so the restart policy's first restart is the immediate one.
    std::vector<double> engine_alone, after_engine_kill, after_worker_kill;
    auto pid_in_status = [&](const char* field) {
        auto st = call(socket, protocol::Verb::status);
        for (const auto& p : (*st)["result"]["ports"]) {
            if (p.value("port", 0) == tiny_port) return static_cast<pid_t>(p.value(field, 0LL));
        }
        return pid_t{0};
    };
    (void)call(socket, protocol::Verb::load, tiny_port, "tiny");
    for (int r = 0; r < rounds; ++r) {
        engine_alone.push_back(
            engine_alone_ms(tiny_model().string(), true, dir / "direct-engine.log"));
        (void)call(socket, protocol::Verb::restart, tiny_port);
        const pid_t engine = pid_in_status("engine_pid");
        auto start = Clock::now();
        ::kill(engine, SIGKILL);
        after_engine_kill.push_back(until_answered(tiny_port, start));
        (void)call(socket, protocol::Verb::restart, tiny_port);
        const pid_t worker = pid_in_status("pid");
        start = Clock::now();
        ::kill(worker, SIGKILL);
        after_worker_kill.push_back(until_answered(tiny_port, start));
    }
    (void)call(socket, protocol::Verb::unload, tiny_port);
    const double alone = percentile(engine_alone, 0.5);
    std::printf("## recovery: kill -9 to the port answering again (tiny model), %d rounds\n\n",
                rounds);
    std::printf("| path | p50 ms | min ms | max ms | p50 minus the engine's own start |\n");
    std::printf("|---|---|---|---|---|\n");
    std::printf("| llama-server alone (spawn -> first chat answer) | %.1f | %.1f | %.1f | |\n",
                alone, percentile(engine_alone, 0), percentile(engine_alone, 1));
    std::printf("| engine kill -9 -> first chat answer | %.1f | %.1f | %.1f | **%+.1f** |\n",
                percentile(after_engine_kill, 0.5), percentile(after_engine_kill, 0),
                percentile(after_engine_kill, 1), percentile(after_engine_kill, 0.5) - alone);
    std::printf("| worker kill -9 -> first chat answer | %.1f | %.1f | %.1f | **%+.1f** |\n\n",
                percentile(after_worker_kill, 0.5), percentile(after_worker_kill, 0),
                percentile(after_worker_kill, 1), percentile(after_worker_kill, 0.5) - alone);

    // 2. Control round trip with a fleet on the fake engine.
    const auto fleet_start = Clock::now();
    auto loaded = call(socket, protocol::Verb::profile_load, 0, "", "fleet");
    const double fleet_ms = Ms(Clock::now() - fleet_start).count();
    if (!loaded || !loaded->value("ok", false)) std::fprintf(stderr, "fleet load failed\n");
    std::vector<double> rtt;
    for (int i = 0; i < status_calls; ++i) {
        const auto start = Clock::now();
        auto reply = call(socket, protocol::Verb::status);
        rtt.push_back(Ms(Clock::now() - start).count());
        if (!reply) return 1;
    }
    std::printf(
        "## control round trip, %d workers (fake engine), %d status calls, new connection each\n\n",
        fleet, status_calls);
    std::printf("| p50 ms | p99 ms | max ms | fleet profile load ms |\n|---|---|---|---|\n");
    std::printf("| %.3f | %.3f | %.3f | %.0f |\n\n", percentile(rtt, 0.5), percentile(rtt, 0.99),
                percentile(rtt, 1), fleet_ms);

    // 3. Memory.
    auto status = call(socket, protocol::Verb::status);
    std::vector<double> worker_rss;
    for (const auto& p : (*status)["result"]["ports"]) {
        if (p.value("pid", 0) > 0)
            worker_rss.push_back(static_cast<double>(rss_bytes(p.value("pid", 0))));
    }
    const double mib = 1024.0 * 1024.0;
    std::printf(
        "## resident memory with %d workers\n\n| process | RSS MiB | PSS MiB |\n|---|---|---|\n",
        fleet);
    std::printf("| ensembled | %.1f | %.1f |\n", rss_bytes((*supervisor)->pid()) / mib,
                process_footprint((*supervisor)->pid()).value_or(0) / mib);
    std::printf("| ensemble-worker (median, without its engine) | %.1f | |\n",
                percentile(worker_rss, 0.5) / mib);
    (*supervisor)->signal_group(SIGTERM);
    while (!(*supervisor)->poll_exit())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return 0;
}
