// A process tree Ensemble started and wrote down — an engine: its leader's pid and start time,
// and its process group — and the one way such a tree is killed once the process that started it
// is gone: only after the leader is proven to be the same process, and then by its group, so
// an engine's own children die with it. No Linux-only mechanism is involved: this is what keeps
// macOS free of orphaned engines, and Linux too when PR_SET_PDEATHSIG did not fire.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "os/process_identity.h"

namespace ensemble {

struct RecordedProcess {
    ProcessIdentity leader;
    pid_t group = 0;      // the leader's process group when it was recorded
    std::string boot_id;  // the boot it was recorded in (os/process_identity.h); "" if unknown

    // The process just started as `pid` (its own group leader), in this boot; nullopt if it
    // is already gone or cannot be identified.
    static std::optional<RecordedProcess> of_running(pid_t pid);
};

enum class KillOutcome {
    killed,    // proven ours and signalled
    gone,      // nothing to do
    not_ours,  // the pid or group belongs to someone else now: left alone
    unknown,   // its identity could not be read: left alone
};

struct KillReport {
    KillOutcome outcome = KillOutcome::unknown;
    std::string message;  // what was done and why, for the event log
};

// Sends `signal` to `process` alone if it is still the recorded process.
KillReport signal_if_ours(const ProcessIdentity& process, int signal, const std::string& what);

// Sends `signal` to the recorded tree if its leader is still the recorded process: to the
// group when the leader still leads it, else to the leader alone. A record from another boot
// names no running process. `what` names it in the message ("engine of port 8100").
KillReport kill_if_ours(const RecordedProcess& process, int signal, const std::string& what);

// Polls until `process` no longer runs; false if it still does after `timeout`.
bool wait_until_gone(const ProcessIdentity& process, std::chrono::milliseconds timeout);

// A record kept in a small file beside the engine's log, so a worker that starts where another
// was killed can find the engine left behind (one line: pid, start time, group, boot id).
// Written to a temporary file and renamed, so a reader never sees half a record.
Status write_record_file(const std::filesystem::path& path, const RecordedProcess& process);
// Errors: "absent" when there is no file; "bad_record" with the reason when it cannot be parsed.
Result<RecordedProcess> read_record_file(const std::filesystem::path& path);

}  // namespace ensemble
