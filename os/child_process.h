// A child process we start and own: its own process group (so a kill reaches its whole tree),
// output appended to a log file, and no inherited descriptors but stdio. Reaping is explicit
// (`poll_exit`), driven by SIGCHLD. On Linux the kernel also kills it if we die
// (PR_SET_PDEATHSIG) — a second line only: macOS has no such thing, so whoever records a child
// (os/recorded_process.h) is what guarantees it does not outlive us, and portable mode turns the
// Linux crutch off to prove it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/result.h"

namespace ensemble {

struct SpawnSpec {
    std::vector<std::string> argv;  // argv[0]: a path, or a name looked up on PATH
    std::map<std::string, std::string> extra_env;
    std::filesystem::path log_file;  // stdout and stderr are appended here; empty: inherit
    // Engines die with their worker; workers outlive a supervisor crash so it can re-adopt them.
    bool die_with_parent = true;
};

struct ExitStatus {
    int code = 0;    // exit code when !signaled
    int signal = 0;  // terminating signal when signaled
    bool signaled = false;

    std::string describe() const;  // "exit code 1", "killed by signal 9 (SIGKILL)"
};

class ChildProcess {
  public:
    static Result<std::unique_ptr<ChildProcess>> spawn(const SpawnSpec& spec);

    // Kills the whole group if it is still running, unless it was spawned to outlive us
    // (die_with_parent = false): a worker must survive its supervisor's exit.
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const;

    // Reaps the child if it has exited — after killing what is left of its process group — and
    // returns how it ended, or nullopt while it runs.
    std::optional<ExitStatus> poll_exit();
    bool exited() const { return exit_.has_value(); }

    // Sends `signal` to the child's process group (engines may have children of their own).
    void signal_group(int signal);

  private:
    struct Impl;
    ChildProcess(std::unique_ptr<Impl> impl, bool kill_on_destroy);
    std::unique_ptr<Impl> impl_;
    bool kill_on_destroy_;
    std::optional<ExitStatus> exit_;
};

// Resolves a program name on PATH (or returns it unchanged if it contains a '/').
std::optional<std::filesystem::path> find_program(const std::string& name);

}  // namespace ensemble
