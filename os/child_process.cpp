#include "os/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "os/portable_mode.h"
#include "os/resource_shortage.h"
#include "os/signal_name.h"

extern char** environ;

namespace ensemble {

namespace {

// A descriptor closed when it goes out of scope.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

  private:
    int fd_ = -1;
};

// pipe(2) with both ends close-on-exec (macOS has no pipe2); each process here spawns from one
// thread, so no other fork can catch the ends in between.
bool make_pipe(Fd& read_end, Fd& write_end) {
    int ends[2];
    if (::pipe(ends) != 0) return false;
    ::fcntl(ends[0], F_SETFD, FD_CLOEXEC);
    ::fcntl(ends[1], F_SETFD, FD_CLOEXEC);
    read_end.reset(ends[0]);
    write_end.reset(ends[1]);
    return true;
}

// In the child, before exec: nothing inherited but stdio. Marking (not closing) keeps the two
// pipes to the parent usable until exec closes them too.
void mark_descriptors_close_on_exec() {
#if defined(__linux__) && defined(CLOSE_RANGE_CLOEXEC)
    if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
#endif
    rlimit limit{};
    long last = 1L << 16;
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
        last = static_cast<long>(std::min<rlim_t>(limit.rlim_cur, 1U << 20));
    for (int fd = 3; fd < last; ++fd)
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

// Everything the child needs, prepared before fork: it allocates nothing after.
struct ChildPlan {
    const char* program;
    char* const* argv;
    char* const* envp;
    int stdin_fd;
    int log_fd;  // -1: inherit stdout and stderr
    bool die_with_parent;
    int release_fd;  // -1: exec at once; else wait for a byte (none: the parent died, give up)
    int exec_error_fd;
    int passed_fd;  // -1, or what becomes kPassedDescriptor
};

[[noreturn]] void run_child(const ChildPlan& plan) {
    // The parent's handlers (Asio's write to the parent's own signal pipe) must not run here,
    // nor its mask carry over: a held child dies of SIGTERM like any process.
    for (int signal = 1; signal < NSIG; ++signal)
        ::signal(signal, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setpgid(0, 0);
#ifdef __linux__
    if (plan.die_with_parent) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() == 1) ::_exit(127);  // the parent is already gone
    }
#endif
    ::dup2(plan.stdin_fd, STDIN_FILENO);
    if (plan.log_fd >= 0) {
        ::dup2(plan.log_fd, STDOUT_FILENO);
        ::dup2(plan.log_fd, STDERR_FILENO);
    }
    mark_descriptors_close_on_exec();
    for (int fd = 0; fd <= 2; ++fd)
        ::fcntl(fd, F_SETFD, 0);  // a dup2 onto itself would keep close-on-exec
    int release_fd = plan.release_fd;
    int exec_error_fd = plan.exec_error_fd;
    if (plan.passed_fd >= 0) {
        // The pipes to the parent move out of the passed descriptor's way first.
        if (release_fd == kPassedDescriptor)
            release_fd = ::fcntl(release_fd, F_DUPFD_CLOEXEC, kPassedDescriptor + 1);
        if (exec_error_fd == kPassedDescriptor)
            exec_error_fd = ::fcntl(exec_error_fd, F_DUPFD_CLOEXEC, kPassedDescriptor + 1);
        if (release_fd == -1 && plan.release_fd != -1) ::_exit(127);  // cannot hold: never run
        if (exec_error_fd == -1) ::_exit(127);
        if (plan.passed_fd != kPassedDescriptor) ::dup2(plan.passed_fd, kPassedDescriptor);
        ::fcntl(kPassedDescriptor, F_SETFD, 0);
    }
    if (release_fd >= 0) {
        char go = 0;
        ssize_t n;
        do {
            n = ::read(release_fd, &go, 1);
        } while (n < 0 && errno == EINTR);
        if (n != 1) ::_exit(127);
    }
    ::execve(plan.program, plan.argv, plan.envp);
    const int error = errno;
    [[maybe_unused]] const auto written = ::write(exec_error_fd, &error, sizeof error);
    ::_exit(127);
}

// Reaps `pid`, however many signals interrupt the wait.
void wait_for(pid_t pid) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
}

}  // namespace

std::string ExitStatus::describe() const {
    if (signaled)
        return "killed by signal " + std::to_string(signal) + " (" + signal_name(signal) + ")";
    return "exit code " + std::to_string(code);
}

void reserve_standard_descriptors() {
    for (int fd = 0; fd <= 2; ++fd) {
        if (::fcntl(fd, F_GETFD) >= 0) continue;
        // The lowest free descriptor: this one.
        if (::open("/dev/null", O_RDWR) != fd) return;
    }
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
    // Out of descriptors, memory or processes: our own shortage, not the program's fault.
    const auto cannot_start = [&](const std::string& step, int error) {
        return Error{
            is_own_resource_shortage(error) ? "no_resources" : "spawn_failed",
            "cannot start '" + program->string() + "': " + step + ": " + std::strerror(error)};
    };
    Fd log;
    if (!spec.log_file.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(spec.log_file.parent_path(), ec);
        log.reset(::open(spec.log_file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (log.get() < 0) {
            if (is_own_resource_shortage(errno)) return cannot_start("its log file", errno);
            return Error{"log_unwritable", "cannot open log file " + spec.log_file.string() + ": " +
                                               std::strerror(errno)};
        }
    }
    Fd null_input(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (null_input.get() < 0) return cannot_start("/dev/null", errno);

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
    std::vector<std::string> arg_strings(spec.argv);
    arg_strings.front() = program->string();
    std::vector<char*> argv;
    for (auto& arg : arg_strings)
        argv.push_back(arg.data());
    argv.push_back(nullptr);

    Fd exec_error_read, exec_error_write, release_read, release_write;
    if (!make_pipe(exec_error_read, exec_error_write) ||
        (spec.before_exec && !make_pipe(release_read, release_write)))
        return cannot_start("pipe", errno);
    const std::string program_path = program->string();
    const ChildPlan plan{.program = program_path.c_str(),
                         .argv = argv.data(),
                         .envp = envp.data(),
                         .stdin_fd = null_input.get(),
                         .log_fd = log.get(),
                         .die_with_parent = spec.die_with_parent && !portable_mode(),
                         .release_fd = release_read.get(),
                         .exec_error_fd = exec_error_write.get(),
                         .passed_fd = spec.passed_fd};
    const pid_t pid = ::fork();
    if (pid < 0) return cannot_start("fork", errno);
    if (pid == 0) {
        // The child's copy of the release pipe's write end would keep its own read from ever
        // seeing the parent die.
        if (release_write.get() >= 0) ::close(release_write.get());
        run_child(plan);
    }
    exec_error_write.reset();
    release_read.reset();
    // The child puts itself in its own group too; doing it here as well settles the group
    // before anything is recorded, whichever of the two runs first.
    ::setpgid(pid, pid);
    auto process = std::unique_ptr<ChildProcess>(new ChildProcess(pid, spec.die_with_parent));
    if (spec.before_exec) {
        if (auto recorded = spec.before_exec(pid); !recorded) {
            release_write.reset();  // EOF: the held child gives up without running anything
            wait_for(pid);
            process->exit_ = ExitStatus{.code = 127};
            return recorded.error();
        }
        const char go = 1;
        if (::write(release_write.get(), &go, 1) != 1) {
            // It died while held (killed by someone): reaped by poll_exit as any other exit.
        }
        release_write.reset();
    }
    // Closed by a successful exec; an errno when exec failed.
    int exec_errno = 0;
    ssize_t n;
    do {
        n = ::read(exec_error_read.get(), &exec_errno, sizeof exec_errno);
    } while (n < 0 && errno == EINTR);
    if (n == sizeof exec_errno) {
        wait_for(pid);
        process->exit_ = ExitStatus{.code = 127};
        return cannot_start("exec", exec_errno);
    }
    return process;
}

ChildProcess::ChildProcess(pid_t pid, bool kill_on_destroy)
    : pid_(pid), kill_on_destroy_(kill_on_destroy) {}

ChildProcess::~ChildProcess() {
    if (!exited() && kill_on_destroy_) {
        signal_group(SIGKILL);
        wait_for(pid_);
    }
}

std::optional<ExitStatus> ChildProcess::poll_exit() {
    if (exit_) return exit_;
    // Exited but not reaped yet: its group number is still reserved by the zombie, so what is
    // left of its tree (an engine's helper processes) can be killed without any doubt first.
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0) {
        if (info.si_pid == 0) return std::nullopt;  // still running
        ::kill(-pid_, SIGKILL);
    }
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
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
    // The child leads its own group (set on both sides of fork); fall back to the pid alone.
    if (::kill(-pid_, signal) != 0) ::kill(pid_, signal);
}

}  // namespace ensemble
