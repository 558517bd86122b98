#include "tests/support/worker_process.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/http_client.h"

namespace ensemble::testing {

std::filesystem::path worker_binary() {
    return ENSEMBLE_TEST_WORKER_BIN;
}
std::filesystem::path tiny_model() {
    return ENSEMBLE_TEST_TINY_MODEL;
}

std::filesystem::path llama_server() {
    const std::filesystem::path path = ENSEMBLE_TEST_LLAMA_SERVER;
    if (!std::filesystem::exists(path)) {
        ADD_FAILURE() << "llama-server not found at " << path
                      << "; run deploy/setup (it provisions llama.cpp), or configure with "
                         "-DENSEMBLE_LLAMA_SERVER=/path/to/llama-server";
    }
    return path;
}

std::filesystem::path test_output_dir(const std::string& test_name) {
    auto dir = std::filesystem::path(ENSEMBLE_TEST_OUTPUT_DIR) / test_name;
    std::filesystem::create_directories(dir);
    return dir;
}

std::string current_test_name() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string(info->test_suite_name()) + "." + info->name();
}

WorkerProcess::WorkerProcess(unsigned short port, std::vector<std::string> extra_args,
                             const std::string& test_name, std::map<std::string, std::string> env)
    : port_(port) {
    const auto dir = test_output_dir(test_name);
    log_ = dir / "worker.log";
    std::filesystem::remove(log_);
    SpawnSpec spec;
    const auto given = [&](const char* flag) {
        return std::find(extra_args.begin(), extra_args.end(), flag) != extra_args.end();
    };
    spec.argv = {worker_binary().string(), "--port", std::to_string(port), "--log-file",
                 (dir / "engine.log").string()};
    if (!given("--model")) spec.argv.insert(spec.argv.end(), {"--model", tiny_model().string()});
    if (!given("--handle")) spec.argv.insert(spec.argv.end(), {"--handle", "tiny"});
    if (!given("--engine")) {
        spec.argv.push_back("--engine-bin");
        spec.argv.push_back(llama_server().string());
    }
    if (!given("--engine-socket")) {
        // As under ensembled: the engine on a Unix socket in a folder of ours (kept short:
        // socket paths allow ~104 bytes), where its preset can listen on one.
        std::string folder =
            (std::filesystem::temp_directory_path() / "ens-engine-XXXXXX").string();
        if (::mkdtemp(folder.data()) == nullptr)
            throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
        socket_folder_ = folder;
        spec.argv.insert(spec.argv.end(),
                         {"--engine-socket", (socket_folder_ / "engine.sock").string()});
    }
    spec.argv.insert(spec.argv.end(), extra_args.begin(), extra_args.end());
    spec.log_file = log_;
    spec.extra_env = std::move(env);
    auto child = ChildProcess::spawn(spec);
    if (!child) throw std::runtime_error(child.error().message);
    child_ = std::move(child).value();
}

WorkerProcess::~WorkerProcess() {
    if (!child_->poll_exit()) {
        child_->signal_group(SIGTERM);
        if (!wait_exit(std::chrono::seconds(20))) child_->signal_group(SIGKILL);
    }
    if (!socket_folder_.empty()) {
        std::error_code ignored;
        std::filesystem::remove_all(socket_folder_, ignored);
    }
}

std::string WorkerProcess::log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

bool WorkerProcess::wait_ready(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (child_->poll_exit()) return false;
        HttpRequest health;
        health.target = "/health";
        health.timeout = std::chrono::milliseconds(2000);
        if (http_request(port_, health).status == 200) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

std::optional<ExitStatus> WorkerProcess::wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (auto status = child_->poll_exit()) return status;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
}

void WorkerProcess::signal(int sig) {
    ::kill(child_->pid(), sig);
}

std::optional<pid_t> WorkerProcess::engine_pid() const {
    const auto children = children_of(child_->pid());
    if (children.empty()) return std::nullopt;
    return children.front();
}

std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> out;
    const auto task_dir = std::filesystem::path("/proc") / std::to_string(pid) / "task";
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator(task_dir, ec)) {
        std::ifstream in(task.path() / "children");
        for (pid_t child = 0; in >> child;) {
            if (process_alive(child)) out.push_back(child);
        }
    }
    return out;
}

bool process_alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return false;
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

}  // namespace ensemble::testing
