// A process tree Ensemble started and wrote down — an engine: its leader's pid and start time,
// and its process group — and the one way such a tree is killed once the process that started it
// is gone: only after the leader is proven to be the same process, and then by its group, so
// an engine's own children die with it. No Linux-only mechanism is involved: this is what keeps
// macOS free of orphaned engines, and Linux too when PR_SET_PDEATHSIG did not fire.
#pragma once

#include <string>

#include "os/process_identity.h"

namespace ensemble {

struct RecordedProcess {
    ProcessIdentity leader;
    pid_t group = 0;  // the leader's process group when it was recorded
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

// Sends `signal` to the recorded tree if its leader is still the recorded process: to the
// group when the leader still leads it, else to the leader alone. `what` names it in the
// message ("engine of port 8100").
KillReport kill_if_ours(const RecordedProcess& process, int signal, const std::string& what);

}  // namespace ensemble
