#include "os/recorded_process.h"

#include <signal.h>

#include <cerrno>
#include <cstring>

#include "os/signal_name.h"

namespace ensemble {

KillReport kill_if_ours(const RecordedProcess& process, int signal, const std::string& what) {
    const auto pid = process.leader.pid;
    const auto name = what + " (pid " + std::to_string(pid) + ")";
    if (pid <= 1 || process.group <= 1) {
        return {KillOutcome::not_ours, name + ": the record names no process of ours (group " +
                                           std::to_string(process.group) + "); left alone"};
    }
    const auto check = check_identity(process.leader);
    switch (check.verdict) {
        case IdentityVerdict::gone:
            return {KillOutcome::gone, name + " is no longer running"};
        case IdentityVerdict::reused:
            return {KillOutcome::not_ours, name + " is gone: " + check.message + "; left alone"};
        case IdentityVerdict::unknown:
            return {KillOutcome::unknown,
                    name + ": cannot prove it is ours (" + check.message + "); left alone"};
        case IdentityVerdict::same:
            break;
    }
    // Proven a moment ago. To be someone else's now it would have to die, be reaped and have
    // its pid handed out again in between: pids are handed out in sequence, a full lap away.
    const auto group = process_group(pid);
    const bool leads_group = group && *group == process.group;
    const int target = leads_group ? -process.group : pid;
    if (::kill(target, signal) != 0 && errno != ESRCH) {
        return {KillOutcome::unknown,
                "cannot send " + signal_name(signal) + " to " + name + ": " + std::strerror(errno)};
    }
    return {KillOutcome::killed,
            "sent " + signal_name(signal) + " to " + name +
                (leads_group ? " and its process group " + std::to_string(process.group)
                             : " (it left its process group " + std::to_string(process.group) +
                                   "; the group was not signalled)")};
}

}  // namespace ensemble
