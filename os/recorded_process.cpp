#include "os/recorded_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>
#include <thread>

#include "os/signal_name.h"

namespace ensemble {

namespace {

// Whether `process` is still the recorded one: nullopt if so, else the report to return.
std::optional<KillReport> refuse_unless_ours(const ProcessIdentity& process,
                                             const std::string& boot, const std::string& name) {
    if (process.pid <= 1)
        return KillReport{KillOutcome::not_ours, name + ": no process of ours; left alone"};
    if (!boot.empty() && boot != boot_id())
        return KillReport{KillOutcome::gone, name + " was recorded before the last reboot"};
    const auto check = check_identity(process);
    switch (check.verdict) {
        case IdentityVerdict::gone:
            return KillReport{KillOutcome::gone, name + " is no longer running"};
        case IdentityVerdict::reused:
            return KillReport{KillOutcome::not_ours,
                              name + " is gone: " + check.message + "; left alone"};
        case IdentityVerdict::unknown:
            return KillReport{KillOutcome::unknown,
                              name + ": cannot prove it is ours (" + check.message +
                                  "); left alone. See what it is: ps -o pid,lstart,args -p " +
                                  std::to_string(process.pid)};
        case IdentityVerdict::same:
            break;
    }
    // Proven a moment ago. To be someone else's now it would have to die, be reaped and have
    // its pid handed out again in between: pids are handed out in sequence, a full lap away.
    return std::nullopt;
}

KillReport send(int target, int signal, const std::string& name, const std::string& done) {
    if (::kill(target, signal) == 0)
        return {KillOutcome::killed, "sent " + signal_name(signal) + " to " + name + done};
    if (errno == ESRCH) return {KillOutcome::gone, name + " was gone already"};
    return {KillOutcome::unknown,
            "cannot send " + signal_name(signal) + " to " + name + ": " + std::strerror(errno)};
}

}  // namespace

std::optional<RecordedProcess> RecordedProcess::from_stored(std::int64_t pid,
                                                            std::int64_t start_time,
                                                            std::int64_t group, std::string boot) {
    constexpr std::int64_t kMaxPid = std::numeric_limits<pid_t>::max();
    if (pid <= 1 || pid > kMaxPid || group != pid || start_time <= 0) return std::nullopt;
    return RecordedProcess{
        {static_cast<pid_t>(pid), start_time}, static_cast<pid_t>(pid), std::move(boot)};
}

std::optional<RecordedProcess> RecordedProcess::of_running(pid_t pid) {
    auto identity = identify_process(pid);
    const auto group = process_group(pid);
    if (!identity || !group) return std::nullopt;
    return RecordedProcess{*identity, *group, ensemble::boot_id()};
}

KillReport signal_if_ours(const ProcessIdentity& process, int signal, const std::string& what) {
    const auto name = what + " (pid " + std::to_string(process.pid) + ")";
    if (auto refusal = refuse_unless_ours(process, "", name)) return *refusal;
    return send(process.pid, signal, name, "");
}

KillReport kill_if_ours(const RecordedProcess& process, int signal, const std::string& what) {
    const auto pid = process.leader.pid;
    const auto name = what + " (pid " + std::to_string(pid) + ")";
    if (process.group != pid) {
        return {KillOutcome::not_ours,
                name + ": the record names process group " + std::to_string(process.group) +
                    ", but every process Ensemble records leads its own group; left alone"};
    }
    if (auto refusal = refuse_unless_ours(process.leader, process.boot_id, name)) {
        // The leader is gone; a group with its number lives on only while members remain (the
        // number is not handed out again before), but they cannot be proven ours: say so.
        if (refusal->outcome == KillOutcome::gone && process.boot_id == boot_id() &&
            process_group_has_members(process.group)) {
            return {KillOutcome::unknown,
                    name + " is gone, but processes remain in its process group " +
                        std::to_string(process.group) +
                        "; they cannot be proven to be its own and are left alone. If they are "
                        "(ps -o pid,args -g " +
                        std::to_string(process.group) + "), stop them: kill -KILL -" +
                        std::to_string(process.group)};
        }
        return *refusal;
    }
    const auto group = process_group(pid);
    if (group && *group == process.group)
        return send(-process.group, signal, name,
                    " and its process group " + std::to_string(process.group));
    return send(pid, signal, name,
                " (it left its process group " + std::to_string(process.group) +
                    ", which was not signalled)");
}

bool wait_until_gone(const ProcessIdentity& process, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto verdict = check_identity(process).verdict;
        if (verdict == IdentityVerdict::gone || verdict == IdentityVerdict::reused) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

namespace {

constexpr std::size_t kMaxRecordBytes = 256;

Error unwritable(const std::filesystem::path& path, const std::string& what, int error) {
    return Error{"record_unwritable", "cannot " + what + " the engine record " + path.string() +
                                          ": " + std::strerror(error) +
                                          (error == ENOSPC ? " (the disk is full)" : "")};
}

}  // namespace

Result<std::unique_ptr<RecordFile>> RecordFile::acquire(const std::filesystem::path& path) {
    // O_NOFOLLOW: never through a link someone planted; O_NONBLOCK: never stuck on a FIFO.
    const int fd =
        ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == ELOOP || errno == ENXIO || errno == EISDIR) {
            return Error{"record_unsafe", "the engine record " + path.string() +
                                              " is not a plain file (a link, a FIFO, a folder): "
                                              "it is not used; remove it"};
        }
        return unwritable(path, "open", errno);
    }
    auto file = std::unique_ptr<RecordFile>(new RecordFile(path, fd));
    struct stat st {};
    if (::fstat(fd, &st) != 0) return unwritable(path, "inspect", errno);
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || st.st_nlink != 1 ||
        (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return Error{"record_unsafe",
                     "the engine record " + path.string() +
                         " is not a file of this user that only this user can write (owner uid " +
                         std::to_string(st.st_uid) + ", mode " + std::to_string(st.st_mode & 0777) +
                         ", " + std::to_string(st.st_nlink) +
                         " links): it is not used; remove it, and keep the log folder private"};
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            return Error{"record_in_use",
                         "another running worker uses the engine record " + path.string() +
                             ": two workers share one engine log; give each its own --log-file"};
        }
        return unwritable(path, "lock", errno);
    }
    return file;
}

RecordFile::~RecordFile() {
    ::close(fd_);  // releases the lock: a record nobody holds was left by a worker that is gone
}

Result<std::optional<RecordedProcess>> RecordFile::read() const {
    char buffer[kMaxRecordBytes + 1] = {};
    const auto n = ::pread(fd_, buffer, kMaxRecordBytes + 1, 0);
    if (n < 0)
        return Error{"bad_record", "cannot read " + path_.string() + ": " + std::strerror(errno)};
    if (n == 0) return std::optional<RecordedProcess>{};
    const std::string text(buffer, static_cast<std::size_t>(n));
    const auto bad = Error{"bad_record", path_.string() +
                                             " does not hold one 'pid start-time group boot-id' "
                                             "line (its content is not shown); nothing is stopped"};
    if (text.size() > kMaxRecordBytes || text.back() != '\n') return bad;
    std::istringstream fields(text);
    std::int64_t pid = 0, start = 0, group = 0;
    std::string boot, extra;
    if (!(fields >> pid >> start >> group >> boot) || (fields >> extra)) return bad;
    auto record = RecordedProcess::from_stored(pid, start, group, boot == "-" ? "" : boot);
    if (!record) {
        return Error{"bad_record",
                     path_.string() + " names pid " + std::to_string(pid) + ", group " +
                         std::to_string(group) +
                         ": not an engine Ensemble records (it leads its own group, pid > 1); "
                         "nothing is stopped"};
    }
    return std::optional<RecordedProcess>(*record);
}

Status RecordFile::write(const RecordedProcess& process) {
    const auto line = std::to_string(process.leader.pid) + ' ' +
                      std::to_string(process.leader.start_time) + ' ' +
                      std::to_string(process.group) + ' ' +
                      (process.boot_id.empty() ? "-" : process.boot_id) + '\n';
    // In place, under the lock: a reader at the wrong moment sees no valid line, and acts on none.
    if (::ftruncate(fd_, 0) != 0) return unwritable(path_, "truncate", errno);
    const auto written = ::pwrite(fd_, line.data(), line.size(), 0);
    if (written != static_cast<ssize_t>(line.size()))
        return unwritable(path_, "write", written < 0 ? errno : ENOSPC);
    return Ok{};
}

KillReport RecordFile::stop_recorded(const std::string& what, std::chrono::milliseconds wait) {
    const auto recorded = read();
    if (!recorded) return {KillOutcome::unknown, recorded.error().message};
    auto report = *recorded ? kill_if_ours(**recorded, SIGKILL, what)
                            : KillReport{KillOutcome::gone, "no engine was recorded"};
    // Emptied only once nothing is left to wait for: whoever starts the next engine must still
    // find one that is exiting, and wait for its memory.
    bool settled = report.outcome != KillOutcome::killed;
    if (!settled) {
        settled = wait_until_gone((*recorded)->leader, wait);
        if (!settled && wait.count() > 0)
            report.message += "; it is still exiting " + std::to_string(wait.count()) + " ms later";
    }
    if (settled) clear();
    return report;
}

void RecordFile::clear() {
    (void)::ftruncate(fd_, 0);  // an empty record: no engine runs
}

}  // namespace ensemble
