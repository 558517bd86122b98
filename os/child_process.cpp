#include "os/child_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "os/boost_process.h"
#include "os/portable_mode.h"
#include "os/signal_name.h"

namespace ensemble {

struct ChildProcess::Impl {
    bp::child child;
};

namespace {

// Runs in the child between fork and exec: a new process group, and (Linux, outside portable
// mode) death with the parent.
struct ChildSetup {
    bool die_with_parent;
    char** envp;  // the complete environment, prepared before fork (nothing allocated after it)
    template <typename Executor>
    void operator()(Executor& exec) const {
        exec.env = envp;
        ::setpgid(0, 0);
#ifdef __linux__
        if (die_with_parent) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() == 1) ::_exit(127);  // the parent is already gone
        }
#endif
    }
};

}  // namespace

std::string ExitStatus::describe() const {
    if (signaled)
        return "killed by signal " + std::to_string(signal) + " (" + signal_name(signal) + ")";
    return "exit code " + std::to_string(code);
}

std::optional<std::filesystem::path> find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) {
        if (::access(name.c_str(), X_OK) == 0) return std::filesystem::path(name);
        return std::nullopt;
    }
    const char* path_env = std::getenv("PATH");
    std::istringstream dirs(path_env != nullptr ? path_env : "/usr/local/bin:/usr/bin:/bin");
    for (std::string dir; std::getline(dirs, dir, ':');) {
        if (dir.empty()) continue;
        auto candidate = std::filesystem::path(dir) / name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return std::nullopt;
}

Result<std::unique_ptr<ChildProcess>> ChildProcess::spawn(const SpawnSpec& spec) {
    if (spec.argv.empty()) throw std::logic_error("ChildProcess::spawn: empty argv");
    const auto program = find_program(spec.argv.front());
    if (!program) {
        return Error{"program_not_found", "cannot run '" + spec.argv.front() +
                                              "': not found or not executable (check the path, "
                                              "or install it and put it on PATH)"};
    }
    FILE* log = nullptr;
    if (!spec.log_file.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(spec.log_file.parent_path(), ec);
        log = std::fopen(spec.log_file.c_str(), "ae");
        if (log == nullptr) {
            return Error{"log_unwritable", "cannot open log file " + spec.log_file.string() + ": " +
                                               std::strerror(errno)};
        }
    }
    // Our own environment array: Boost 1.74's environment lookup reads past short entries.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const auto name = entry.substr(0, entry.find('='));
        if (spec.extra_env.find(std::string(name)) == spec.extra_env.end())
            env_strings.emplace_back(entry);
    }
    for (const auto& [k, v] : spec.extra_env)
        env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& entry : env_strings)
        envp.push_back(entry.data());
    envp.push_back(nullptr);
    const ChildSetup setup{spec.die_with_parent && !portable_mode(), envp.data()};
    std::vector<std::string> args(spec.argv.begin() + 1, spec.argv.end());
    std::error_code ec;
    bp::child child;
    if (log != nullptr) {
        child = bp::child(bp::exe = program->string(), bp::args = args,
                          bp::std_in<bp::null, bp::std_out> log, bp::std_err > log,
                          bp::limit_handles, bp::extend::on_exec_setup = setup, ec);
        std::fclose(log);
    } else {
        child = bp::child(bp::exe = program->string(), bp::args = args, bp::std_in < bp::null,
                          bp::limit_handles, bp::extend::on_exec_setup = setup, ec);
    }
    if (ec) {
        return Error{"spawn_failed", "cannot start '" + program->string() + "': " + ec.message()};
    }
    // The child puts itself in its own group before exec; doing it here too means the group is
    // settled when spawn returns, whichever of the two runs first (the classic job-control race),
    // so a record of the child's group taken now is right.
    ::setpgid(child.id(), child.id());
    return std::unique_ptr<ChildProcess>(
        new ChildProcess(std::make_unique<Impl>(Impl{std::move(child)}), spec.die_with_parent));
}

ChildProcess::ChildProcess(std::unique_ptr<Impl> impl, bool kill_on_destroy)
    : impl_(std::move(impl)), kill_on_destroy_(kill_on_destroy) {}

ChildProcess::~ChildProcess() {
    if (!exited() && kill_on_destroy_) {
        signal_group(SIGKILL);
        ::waitpid(pid(), nullptr, 0);
    }
    impl_->child.detach();  // reaped above or by poll_exit; keep Boost from touching it again
}

pid_t ChildProcess::pid() const {
    return impl_->child.id();
}

std::optional<ExitStatus> ChildProcess::poll_exit() {
    if (exit_) return exit_;
    // Exited but not reaped yet: its group number is still reserved by the zombie, so what is
    // left of its tree (an engine's helper processes) can be killed without any doubt first.
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0) {
        if (info.si_pid == 0) return std::nullopt;  // still running
        ::kill(-pid(), SIGKILL);
    }
    int status = 0;
    const pid_t r = ::waitpid(pid(), &status, WNOHANG);
    if (r == 0) return std::nullopt;
    ExitStatus s;
    if (r < 0) {
        s.code = -1;  // already reaped elsewhere; nothing more is known
    } else if (WIFSIGNALED(status)) {
        s.signaled = true;
        s.signal = WTERMSIG(status);
    } else {
        s.code = WEXITSTATUS(status);
    }
    exit_ = s;
    return exit_;
}

void ChildProcess::signal_group(int signal) {
    if (exited()) return;
    // The child made its own group in ChildSetup; if exec failed early, fall back to the pid.
    if (::kill(-pid(), signal) != 0) ::kill(pid(), signal);
}

}  // namespace ensemble
