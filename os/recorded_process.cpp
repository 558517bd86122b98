#include "os/recorded_process.h"

#include <signal.h>

#include <cerrno>
#include <cstring>
#include <fstream>
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
            return KillReport{KillOutcome::unknown, name + ": cannot prove it is ours (" +
                                                        check.message + "); left alone"};
        case IdentityVerdict::same:
            break;
    }
    // Proven a moment ago. To be someone else's now it would have to die, be reaped and have
    // its pid handed out again in between: pids are handed out in sequence, a full lap away.
    return std::nullopt;
}

KillReport send(int target, int signal, const std::string& name, const std::string& done) {
    if (::kill(target, signal) != 0 && errno != ESRCH) {
        return {KillOutcome::unknown,
                "cannot send " + signal_name(signal) + " to " + name + ": " + std::strerror(errno)};
    }
    return {KillOutcome::killed, "sent " + signal_name(signal) + " to " + name + done};
}

}  // namespace

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
    if (process.group <= 1) {
        return {KillOutcome::not_ours, name + ": the record names no process group of ours (" +
                                           std::to_string(process.group) + "); left alone"};
    }
    if (auto refusal = refuse_unless_ours(process.leader, process.boot_id, name)) return *refusal;
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

Status write_record_file(const std::filesystem::path& path, const RecordedProcess& process) {
    const auto temporary = path.string() + ".tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << process.leader.pid << ' ' << process.leader.start_time << ' ' << process.group << ' '
            << (process.boot_id.empty() ? "-" : process.boot_id) << '\n';
        if (!out.flush()) {
            return Error{"record_unwritable", "cannot write " + temporary + ": " +
                                                  std::strerror(errno) + " (is the disk full?)"};
        }
    }
    std::error_code ec;
    std::filesystem::rename(temporary, path, ec);
    if (ec) return Error{"record_unwritable", "cannot rename " + temporary + ": " + ec.message()};
    return Ok{};
}

Result<RecordedProcess> read_record_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) return Error{"absent", "no record at " + path.string()};
    std::string line;
    if (!std::getline(in, line) || line.size() > 200)
        return Error{"bad_record", path.string() + " is empty or too long"};
    std::istringstream fields(line);
    RecordedProcess r;
    std::string boot;
    if (!(fields >> r.leader.pid >> r.leader.start_time >> r.group >> boot) || r.leader.pid <= 1 ||
        r.group <= 1 || r.leader.start_time <= 0) {
        return Error{
            "bad_record",
            path.string() + " does not hold 'pid start-time group boot-id': '" + line + "'"};
    }
    r.boot_id = boot == "-" ? "" : boot;
    return r;
}

}  // namespace ensemble
