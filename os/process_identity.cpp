#include <unistd.h>

#include <cerrno>

#include "os/process_identity.h"

namespace ensemble {

IdentityCheck check_identity(const ProcessIdentity& recorded) {
    if (recorded.pid <= 1) {
        return {IdentityVerdict::unknown,
                "pid " + std::to_string(recorded.pid) + " is not a process Ensemble started"};
    }
    if (recorded.start_time <= 0) {
        return {IdentityVerdict::unknown,
                "no start time was recorded for pid " + std::to_string(recorded.pid)};
    }
    auto now = identify_process(recorded.pid);
    if (!now) {
        if (now.error().code == "gone") return {IdentityVerdict::gone, now.error().message};
        return {IdentityVerdict::unknown, now.error().message};
    }
    if (now->start_time != recorded.start_time) {
        return {IdentityVerdict::reused, "pid " + std::to_string(recorded.pid) +
                                             " now belongs to another process (started at " +
                                             std::to_string(now->start_time) + ", recorded " +
                                             std::to_string(recorded.start_time) + ")"};
    }
    return {IdentityVerdict::same, ""};
}

std::optional<pid_t> process_group(pid_t pid) {
    const pid_t group = ::getpgid(pid);
    if (group < 0) return std::nullopt;
    return group;
}

}  // namespace ensemble
