// Who a pid is. The kernel reuses pids, so Ensemble names a process by its pid *and* its start
// time as the kernel records it (Linux: /proc/PID/stat; macOS: proc_pidinfo PROC_PIDTBSDINFO),
// and never signals a recorded process whose identity it has not proven again just before.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "protocol/result.h"

namespace ensemble {

struct ProcessIdentity {
    pid_t pid = 0;
    // Opaque: comparable only with another reading on the same machine in the same boot
    // (Linux: clock ticks since boot; macOS: microseconds since the epoch).
    std::int64_t start_time = 0;

    bool operator==(const ProcessIdentity&) const = default;
};

// Reads the identity of a running process. Errors: "gone" (no such process, or a zombie that
// has exited and waits to be reaped) and "unreadable" (it exists, but its start time cannot be
// read: another user's process, a kernel without /proc), each with a message saying so.
Result<ProcessIdentity> identify_process(pid_t pid);

enum class IdentityVerdict {
    same,     // the recorded process still runs
    gone,     // no process has that pid any more
    reused,   // another process has the pid now
    unknown,  // cannot tell: never act on it
};

struct IdentityCheck {
    IdentityVerdict verdict = IdentityVerdict::unknown;
    std::string message;  // for unknown and reused: what was found
};

// Whether `recorded` still runs. A pid of 0 or 1 is never "same".
IdentityCheck check_identity(const ProcessIdentity& recorded);

// The process group a running process is in; nullopt when it is gone.
std::optional<pid_t> process_group(pid_t pid);

// Whether any process still running (not a zombie) is in process group `group` (Linux: /proc;
// macOS: proc_listpids(PROC_PGRP_ONLY)).
bool process_group_has_members(pid_t group);

// This boot's identity (Linux: /proc/sys/kernel/random/boot_id; macOS: kern.bootsessionuuid);
// empty when unreadable. A process recorded in another boot no longer runs, whatever its pid.
std::string boot_id();

}  // namespace ensemble
