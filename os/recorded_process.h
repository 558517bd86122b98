// A process tree Ensemble started and wrote down — an engine: its leader's pid and start time,
// and its process group, which it leads — and the one way such a tree is killed once the
// process that started it is gone: only after the leader is proven to be the same process, and
// then by its group, so an engine's own children die with it. No Linux-only mechanism is
// involved: this is what keeps macOS free of orphaned engines, and Linux too when
// PR_SET_PDEATHSIG did not fire.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "os/process_identity.h"

namespace ensemble {

struct RecordedProcess {
    ProcessIdentity leader;
    pid_t group = 0;      // the process group it leads: always leader.pid for a valid record
    std::string boot_id;  // the boot it was recorded in (os/process_identity.h); "" if unknown

    // The process just started as `pid` (it leads its own group), in this boot; nullopt if it
    // is already gone or cannot be identified.
    static std::optional<RecordedProcess> of_running(pid_t pid);
    // From numbers stored elsewhere (SQLite): nullopt unless they fit a pid and the group is
    // the pid itself, as for every process Ensemble records.
    static std::optional<RecordedProcess> from_stored(std::int64_t pid, std::int64_t start_time,
                                                      std::int64_t group, std::string boot);
};

enum class KillOutcome {
    killed,    // proven ours and signalled
    gone,      // nothing to do
    not_ours,  // the record names someone else's process now: left alone
    unknown,   // cannot be proven either way: left alone
};

struct KillReport {
    KillOutcome outcome = KillOutcome::unknown;
    std::string message;  // what was done and why, for the event log
};

// Sends `signal` to `process` alone if it is still the recorded process.
KillReport signal_if_ours(const ProcessIdentity& process, int signal, const std::string& what);

// Sends `signal` to the recorded tree if its leader is still the recorded process: to its group
// when it still leads it, else to the leader alone. A record from another boot names no running
// process. A leader that is gone while its group lives on is reported (its members cannot be
// proven ours), with the command to stop them. `what` names it ("the engine of port 8100").
KillReport kill_if_ours(const RecordedProcess& process, int signal, const std::string& what);

// Polls until `process` no longer runs; false if it still does after `timeout`.
bool wait_until_gone(const ProcessIdentity& process, std::chrono::milliseconds timeout);

// The small file beside an engine's log that records the running engine (one line: pid, start
// time, group, boot id; empty while none runs), so a worker that starts where another died can
// find the engine left behind. The worker holds it locked (flock) for as long as it runs: a
// record nobody holds was left by a worker that died, and two live workers never share one.
// It is read and written only as a regular file of this user that nobody else can write, with
// one link, never through a symbolic link, and at most a few hundred bytes of it.

class RecordFile {
  public:
    // Errors: "record_in_use" (a running worker holds it), "record_unsafe" (not such a file),
    // "record_unwritable" (cannot be created or locked); each message says what to do.
    static Result<std::unique_ptr<RecordFile>> acquire(const std::filesystem::path& path);
    ~RecordFile();
    RecordFile(const RecordFile&) = delete;
    RecordFile& operator=(const RecordFile&) = delete;

    // What an earlier worker left in it: nullopt when empty; "bad_record" when not a record.
    Result<std::optional<RecordedProcess>> read() const;
    Status write(const RecordedProcess& process);
    void clear();
    const std::filesystem::path& path() const { return path_; }

    // Kills what this record names (SIGKILL to its group) if it is provably ours, waits up to
    // `wait` for it to be gone (its memory is free only then), and empties the record unless it
    // is still exiting. The outcome is `gone` when nothing was recorded. `what` names it ("the
    // engine of port 8100").
    KillReport stop_recorded(const std::string& what, std::chrono::milliseconds wait);

  private:
    RecordFile(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}
    std::filesystem::path path_;
    int fd_;
};

}  // namespace ensemble
