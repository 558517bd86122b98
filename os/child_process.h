// A child process we start and own: its own process group (so a kill reaches its whole tree),
// output appended to a log file, and no inherited descriptors but stdio. Reaping is explicit
// (`poll_exit`), driven by SIGCHLD. Plain fork and exec, so that the child can be held between
// the two until it has been written down (`before_exec`). On Linux the kernel also kills it if we
// die (PR_SET_PDEATHSIG) — a second line only: macOS has no such thing, so whoever records a child
// (os/recorded_process.h) is what guarantees it does not outlive us, and portable mode turns the
// Linux crutch off to prove it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/result.h"

namespace ensemble {

inline constexpr int kPassedDescriptor = 3;

struct SpawnSpec {
    std::vector<std::string> argv;  // argv[0]: a path, or a name looked up on PATH
    std::map<std::string, std::string> extra_env;
    std::filesystem::path log_file;  // stdout and stderr are appended here; empty: inherit
    // A descriptor the program gets as descriptor kPassedDescriptor (3), the only one besides
    // stdio: a listening socket handed to a worker. -1: none.
    int passed_fd = -1;
    // Engines die with their worker; workers outlive a supervisor crash so it can re-adopt them.
    bool die_with_parent = true;
    // Runs in the parent while the new child (its pid, its own group) waits before exec: the
    // program starts only once this returns Ok, and never if we die first or it fails (then
    // spawn returns its error) — so a record written here cannot miss it.
    std::function<Status(pid_t)> before_exec;
};

struct ExitStatus {
    int code = 0;    // exit code when !signaled
    int signal = 0;  // terminating signal when signaled
    bool signaled = false;

    std::string describe() const;  // "exit code 1", "killed by signal 9 (SIGKILL)"
};

class ChildProcess {
  public:
    // Errors: "program_not_found", "log_unwritable", "spawn_failed", and "no_resources" when we
    // are out of descriptors, memory or processes ourselves (the program is not to blame).
    static Result<std::unique_ptr<ChildProcess>> spawn(const SpawnSpec& spec);

    // Kills the whole group if it is still running, unless it was spawned to outlive us
    // (die_with_parent = false): a worker must survive its supervisor's exit.
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const { return pid_; }

    // Reaps the child if it has exited — after killing what is left of its process group — and
    // returns how it ended, or nullopt while it runs.
    std::optional<ExitStatus> poll_exit();
    bool exited() const { return exit_.has_value(); }

    // Sends `signal` to the child's process group (engines may have children of their own).
    void signal_group(int signal);

  private:
    ChildProcess(pid_t pid, bool kill_on_destroy);
    pid_t pid_;
    bool kill_on_destroy_;
    std::optional<ExitStatus> exit_;
};

// Opens /dev/null on any of descriptors 0, 1, 2 that is closed (a daemon started with its stdio
// closed): otherwise the next socket or file would take one of them, and a child's stdio setup
// would overwrite it. Call first thing in main.
void reserve_standard_descriptors();

// Resolves a program name on PATH (or returns it unchanged if it contains a '/').
std::optional<std::filesystem::path> find_program(const std::string& name);

}  // namespace ensemble
