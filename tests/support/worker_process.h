// Runs ensemble-worker as a child process for integration tests, with the real llama-server
// (or any engine command) and a generated model, and finds its engine child.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "os/child_process.h"
#include "os/port_holder.h"

namespace ensemble::testing {

// Paths the build passes in (see tests/CMakeLists.txt).
std::filesystem::path worker_binary();
std::filesystem::path llama_server();  // fails the test with a clear message when missing
std::filesystem::path tiny_model();
std::filesystem::path test_output_dir(const std::string& test_name);
std::string current_test_name();  // "Suite.Test" of the test running now

class WorkerProcess {
  public:
    // Starts `ensemble-worker --port PORT` plus `extra_args`, defaulting --model to the tiny
    // model, --handle to "tiny", the engine to the provisioned llama-server and
    // --engine-socket to a private folder of its own; `env` is added to its environment
    // (e.g. ENSEMBLE_PORTABLE=1).
    WorkerProcess(unsigned short port, std::vector<std::string> extra_args,
                  const std::string& test_name, std::map<std::string, std::string> env = {});
    // Stops it as a user would (SIGTERM: it drains and stops its engine), SIGKILL if it hangs.
    ~WorkerProcess();

    unsigned short port() const { return port_; }
    pid_t pid() const { return child_->pid(); }
    const std::filesystem::path& log_file() const { return log_; }
    std::string log() const;

    // Polls GET /health until 200; false on timeout or if the worker exited.
    bool wait_ready(std::chrono::milliseconds timeout = std::chrono::seconds(60));
    // Waits for the worker to exit; nullopt on timeout.
    std::optional<ExitStatus> wait_exit(std::chrono::milliseconds timeout);
    void signal(int sig);
    // The worker's engine process (its direct child), if one runs.
    std::optional<pid_t> engine_pid() const;
    // The folder of the engine's socket (empty when --engine-socket was given).
    const std::filesystem::path& socket_folder() const { return socket_folder_; }

  private:
    unsigned short port_;
    std::filesystem::path log_;
    std::filesystem::path socket_folder_;  // the engine's, removed with the worker
    std::unique_ptr<ChildProcess> child_;
};

bool process_alive(pid_t pid);             // true for a running process (zombies count as gone)
using ensemble::tcp_ports_listened_on_by;  // os/port_holder.h
std::vector<pid_t> children_of(pid_t pid);

}  // namespace ensemble::testing
