// The fixture for tests that run ensembled and the ensemble CLI with real llama-server workers:
// a config with two real models (tiny, tiny-two), one that cannot load (broken) and a fake
// engine, on free ports; helpers to start the supervisor, run the CLI and read status.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

namespace ensemble::testing {

using nlohmann::json;
using namespace std::chrono_literals;

// Sends bytes to a Unix socket and returns what comes back within a short time.
inline std::string unix_exchange(const std::filesystem::path& path, const std::string& bytes) {
    boost::asio::io_context io;
    local_socket socket(io);
    socket.connect(boost::asio::local::stream_protocol::endpoint(path.string()));
    boost::asio::write(socket, boost::asio::buffer(bytes));
    timeval tv{0, 500000};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string out;
    char buf[4096];
    for (;;) {
        const auto n = ::recv(socket.native_handle(), buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

struct CliResult {
    int exit_code = -1;
    std::string out;
};

class SupervisorFixture : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = test_output_dir(std::string(info->test_suite_name()) + "." + info->name());
        // Socket paths must stay short (Unix sockets allow ~104 bytes): run_dir lives in /tmp.
        run_dir_ = std::filesystem::temp_directory_path() / ("ens-" + std::to_string(::getpid()));
        std::filesystem::remove_all(dir_ / "state");
        std::filesystem::remove_all(run_dir_);
        const bool fleet_test = std::string(info->name()).find("Fleet") != std::string::npos;
        const auto ports = free_ports(fleet_test ? 34 : 2);
        port_a_ = ports[0];
        port_b_ = ports[1];
        std::ofstream(dir_ / "broken.gguf") << "GGUF but not really a model";
        std::ofstream(dir_ / "ensemble.yaml")
            << "supervisor:\n"
            << "  state_dir: " << (dir_ / "state").string() << "\n"
            << "  run_dir: " << run_dir_.string() << "\n"
            << extra_supervisor_settings()
            << "engines:\n  llama:\n    preset: llama.cpp\n    binary: " << llama_server().string()
            << "\n"
            << "    args: [--threads, \"1\"]\n"
            << "  fake:\n    preset: command\n    command: \"" << ENSEMBLE_TEST_FAKE_ENGINE_BIN
            << " --port {port} --model {handle}\"\n    ready_path: /health\n"
            << extra_engines() << "models:\n"
            << "  tiny: {engine: llama, path: " << tiny_model().string()
            << ", context: 16384, parallel: 1}\n"
            << "  tiny-two: {engine: llama, path: " << tiny_model().string()
            << ", context: 1024, parallel: 1}\n"
            << "  broken: {engine: llama, path: " << (dir_ / "broken.gguf").string() << "}\n"
            << "  fake: {engine: fake, path: none}\n"
            // Fault injection (the fake engine's flags, after the command's own).
            << "  fake-crashy: {engine: fake, path: none, args: [--crash-after, \"5\"]}\n"
            << "  fake-slow: {engine: fake, path: none, memory: 100MiB, args: [--slow-start, "
               "\"2\"]}\n"
            << "  fake-dead: {engine: fake, path: none, args: [--exit-at-start, \"1\"]}\n"
            << "  fake-hog: {engine: fake, path: none, args: [--grow-mb, \"64\"]}\n"
            << "  fake-slow-stream: {engine: fake, path: none,"
               " args: [--tokens, \"40\", --token-delay-ms, \"200\"]}\n"
            << extra_models() << "profiles:\n"
            << "  pair:\n    " << port_a_ << ": tiny\n    " << port_b_ << ": tiny-two\n"
            << "  single:\n    " << port_a_ << ": tiny-two\n"
            << extra_profiles() << (fleet_test ? "  fleet:\n" : "");
        for (std::size_t i = 2; i < ports.size(); ++i) {
            fleet_ports_.push_back(ports[i]);
            std::ofstream(dir_ / "ensemble.yaml", std::ios::app)
                << "    " << fleet_ports_.back() << ": fake\n";
        }
    }

    void TearDown() override {
        if (supervisor_) {
            ::kill(supervisor_->pid(), SIGTERM);
            wait_exit(*supervisor_, 60s);
        }
        for (pid_t pid : workers_) {
            if (process_alive(pid)) ::kill(pid, SIGKILL);
        }
        // (Each test process has its own: thousands were left in /tmp.)
        std::error_code ignored;
        std::filesystem::remove_all(run_dir_, ignored);
    }

    // More lines for the config's supervisor section ("  key: value\n" each).
    virtual std::string extra_supervisor_settings() const { return ""; }
    // More models ("  handle: {...}\n" each).
    virtual std::string extra_models() const { return ""; }
    // More engines ("  name:\n    key: value\n" each) and profiles ("  name:\n    PORT: model\n").
    virtual std::string extra_engines() const { return ""; }
    virtual std::string extra_profiles() const { return ""; }

    // `descriptor_limit` > 0: ensembled runs with that hard limit on open descriptors.
    std::unique_ptr<ChildProcess> start_supervisor(std::map<std::string, std::string> env = {},
                                                   int descriptor_limit = 0) {
        SpawnSpec spec;
        spec.argv = {ensembled_bin_, "--config", (dir_ / "ensemble.yaml").string()};
        spec.argv.insert(spec.argv.end(), ensembled_args_.begin(), ensembled_args_.end());
        if (descriptor_limit > 0) {
            spec.argv.insert(spec.argv.begin(), {"/bin/sh", "-c",
                                                 "ulimit -n " + std::to_string(descriptor_limit) +
                                                     " && exec \"$0\" \"$@\""});
        }
        if (!worker_bin_.empty()) spec.argv.insert(spec.argv.end(), {"--worker-bin", worker_bin_});
        spec.log_file = dir_ / "ensembled.log";
        spec.die_with_parent = false;  // the kill -9 test needs its workers to outlive it
        spec.extra_env = std::move(env);
        spec.extra_env["ENSEMBLE_ORPHAN_GRACE_MS"] = "30000";  // leaked workers end themselves
        auto child = ChildProcess::spawn(spec);
        EXPECT_TRUE(child);
        // Ready when it answers (a killed supervisor's socket file may still be there); one
        // that exits at start (a damaged database, say) is not asked 300 times (a minute under
        // ASan, where each ensemble command starts slowly).
        for (int i = 0; i < 300 && child && !(*child)->poll_exit() && cli("status").exit_code != 0;
             ++i)
            std::this_thread::sleep_for(10ms);
        return child ? std::move(child).value() : nullptr;
    }

    // ensembled exits without stopping its workers (SIGQUIT), and every record of them is lost
    // with its state database and the backup.
    void crash_and_lose_the_state_database() {
        ::kill(supervisor_->pid(), SIGQUIT);
        ASSERT_TRUE(wait_exit(*supervisor_, 10s));
        for (const char* file : {"state.db", "state.db-wal", "state.db-shm", "state.db.backup"})
            std::filesystem::remove(dir_ / "state" / file);
    }

    static bool wait_exit(ChildProcess& p, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (p.poll_exit()) return true;
            std::this_thread::sleep_for(10ms);
        }
        return false;
    }

    CliResult cli(const std::string& args) {
        // Each call has its own file: a test may run one command in a thread while it asks
        // for status in another, and a shared file interleaves their output.
        const auto out = dir_ / ("cli-" + std::to_string(++cli_calls_) + ".out");
        const std::string cmd = cli_bin_ + " --config " + (dir_ / "ensemble.yaml").string() + " " +
                                args + " > " + out.string() + " 2>&1";
        CliResult r;
        const int status = std::system(cmd.c_str());
        r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        std::ifstream in(out);
        r.out.assign(std::istreambuf_iterator<char>(in), {});
        in.close();
        std::filesystem::remove(out);
        return r;
    }

    json status() {
        auto r = cli("--json status");
        auto j = json::parse(r.out, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << r.out;
        for (const auto& p : j["result"]["ports"]) {
            if (p.value("pid", 0) > 0) workers_.push_back(p.value("pid", 0));
        }
        return j.is_discarded() ? json{} : j["result"];
    }

    json port_status(int port) {
        const auto all = status();  // named: iterating a temporary's member would dangle
        for (const auto& p : all["ports"]) {
            if (p["port"] == port) return p;
        }
        return {};
    }

    // The port's status once it is in `state`, or as last seen when `timeout` passes.
    json wait_for_state(int port, const std::string& state,
                        std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        json p = json::object();
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (p.value("state", "") != state && std::chrono::steady_clock::now() < deadline) {
            if (const auto now = port_status(port); now.is_object()) p = now;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return p;
    }

    static int chat(unsigned short port) {
        return http_request(
                   port,
                   chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4})"))
            .status;
    }

    // The binaries under test: the build's, unless a test points them at an installed layout.
    std::string ensembled_bin_ = ENSEMBLE_TEST_ENSEMBLED_BIN;
    std::string cli_bin_ = ENSEMBLE_TEST_CLI_BIN;
    std::atomic<int> cli_calls_{0};
    std::string worker_bin_ = worker_binary().string();  // empty: the one next to ensembled
    std::vector<std::string> ensembled_args_;            // more of ensembled's options
    std::filesystem::path dir_, run_dir_;
    unsigned short port_a_ = 0, port_b_ = 0;
    std::vector<unsigned short> fleet_ports_;
    std::unique_ptr<ChildProcess> supervisor_;
    std::vector<pid_t> workers_;
};

}  // namespace ensemble::testing
