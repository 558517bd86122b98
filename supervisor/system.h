// The fleet's seams to the world: time (a clock, timers, sleeps), processes (identities,
// signals, the port probe, engines left behind) and the starting of workers. ensembled passes
// the real ones (system.cpp, worker_spawner.h); the fleet's unit tests pass fakes
// (tests/support/fake_system.h) and run the whole fleet with no process and no real time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "os/asio.h"
#include "os/child_process.h"
#include "os/listening_socket.h"
#include "os/process_identity.h"
#include "os/recorded_process.h"
#include "profiles/config.h"
#include "protocol/result.h"

namespace ensemble {

class Scheduler {
  public:
    using Clock = std::chrono::steady_clock;
    virtual ~Scheduler() = default;

    virtual Clock::time_point now() const = 0;
    virtual std::int64_t unix_ms() const = 0;  // wall clock, for records and replies
    // Runs `fn` on the io_context once `delay` has passed (never before).
    virtual void after(std::chrono::milliseconds delay, std::function<void()> fn) = 0;
    // Returns at `deadline`, or earlier when wake_sleepers() is called.
    virtual awaitable<void> sleep_until(Clock::time_point deadline) = 0;
    virtual void wake_sleepers() = 0;
};

// A worker this supervisor started, until it is reaped.
class WorkerProcess {
  public:
    virtual ~WorkerProcess() = default;
    virtual pid_t pid() const = 0;
    // How it ended, once it has (reaping it); nullopt while it runs.
    virtual std::optional<ExitStatus> poll_exit() = 0;
};

// What a dead worker's engine was, as the worker's last heartbeat named it.
struct EngineRecord {
    std::int64_t pid = 0, start_time = 0, group = 0;
};

class ProcessOps {
  public:
    virtual ~ProcessOps() = default;

    virtual Result<ProcessIdentity> identify(pid_t pid) const = 0;
    virtual IdentityCheck check(const ProcessIdentity& recorded) const = 0;
    // Our own unreaped child: its pid cannot be anyone else's.
    virtual void signal_child(pid_t pid, int signal) = 0;
    // Anyone else: only after proving it is still `process` (os/recorded_process.h).
    virtual KillReport signal_if_ours(const ProcessIdentity& process, int signal,
                                      const std::string& what) = 0;
    virtual std::string boot_id() const = 0;
    // Ok when a listener could bind host:port now; "bad_host" or "port_busy" otherwise.
    virtual Status port_free(const std::string& host, int port) const = 0;
    // Who holds a busy port, for the operator ("held by nginx (pid 812)", or how to find out).
    // Searches every process: not for routine checks.
    virtual std::string port_holder(int port) const = 0;
    // A port's listening socket, held by ensembled and passed to each worker it starts.
    virtual Result<ListeningSocket> listen(const std::string& host, int port) = 0;
    // Stops the engine a dead worker left running, proven ours: from the record file the
    // worker kept (`record_path`) and from what it told us (`told`). What was done, for the
    // event log (nothing when there was nothing to do).
    virtual std::vector<std::string> stop_engine_left_behind(
        const std::filesystem::path& record_path, const EngineRecord& told, const std::string& boot,
        const std::string& what) = 0;
    // For a SIGKILL nobody here sent: memory trouble behind it, or "" (os/memory_kill_watch.h).
    virtual std::string explain_sigkill() = 0;
};

// What a worker runs: the same command means the same worker (its id and token aside).
struct WorkerCommand {
    std::vector<std::string> argv;
    std::map<std::string, std::string> engine_env;  // the engine's `env:`, passed out of argv

    bool operator==(const WorkerCommand&) const = default;
};

struct WorkerLaunch {
    std::string worker_id;
    std::string token;
    WorkerCommand command;
    std::filesystem::path worker_log;
    std::filesystem::path engine_log;
};

// Where a chained model's upstream is served: the port, and the URL its engine is given.
struct UpstreamLink {
    std::string handle;
    int port = 0;
    std::string url;  // {upstream_url}: http://127.0.0.1:PORT/v1

    bool operator==(const UpstreamLink&) const = default;
};

// Where on its port a worker runs: which of the port's two sets of files it uses
// (protocol::port_files), whether it stands by, loading beside the serving worker until told
// to serve (a swap's incoming worker), and, for a chained model, where its upstream is.
struct WorkerSlot {
    int files = 0;
    bool standby = false;
    std::optional<UpstreamLink> upstream;
};

struct SpawnedWorker {
    WorkerLaunch launch;
    std::unique_ptr<WorkerProcess> process;
};

class WorkerLauncher {
  public:
    virtual ~WorkerLauncher() = default;
    // The command line and identity for `port` serving `handle` (no process started).
    // `overrides` are the profile's per-port context/parallel, if any.
    // `slot`: which of the port's sets of files it uses and its upstream (WorkerSlot).
    virtual Result<WorkerLaunch> plan(const Config& config, int port, const std::string& handle,
                                      const PortAssignment* overrides,
                                      const WorkerSlot& slot) const = 0;
    // Errors as ChildProcess::spawn's: "no_resources" is ensembled's own shortage.
    // `listening`: the port's socket, which the worker accepts on (protocol::kListenFd).
    virtual Result<SpawnedWorker> spawn(const Config& config, int port, const std::string& handle,
                                        const PortAssignment* overrides,
                                        const ListeningSocket& listening,
                                        WorkerSlot slot) const = 0;
};

// The real ones.
class AsioScheduler final : public Scheduler {
  public:
    explicit AsioScheduler(asio::io_context& io) : io_(io) {}
    Clock::time_point now() const override { return Clock::now(); }
    std::int64_t unix_ms() const override;
    void after(std::chrono::milliseconds delay, std::function<void()> fn) override;
    awaitable<void> sleep_until(Clock::time_point deadline) override;
    void wake_sleepers() override;

  private:
    asio::io_context& io_;
    std::vector<steady_timer*> sleepers_;
};

class OsProcessOps final : public ProcessOps {
  public:
    // Samples memory pressure on `io`, to explain SIGKILLs.
    explicit OsProcessOps(asio::io_context& io);
    ~OsProcessOps() override;
    Result<ProcessIdentity> identify(pid_t pid) const override;
    IdentityCheck check(const ProcessIdentity& recorded) const override;
    void signal_child(pid_t pid, int signal) override;
    KillReport signal_if_ours(const ProcessIdentity& process, int signal,
                              const std::string& what) override;
    std::string boot_id() const override;
    Status port_free(const std::string& host, int port) const override;
    std::string port_holder(int port) const override;
    Result<ListeningSocket> listen(const std::string& host, int port) override;
    std::vector<std::string> stop_engine_left_behind(const std::filesystem::path& record_path,
                                                     const EngineRecord& told,
                                                     const std::string& boot,
                                                     const std::string& what) override;
    std::string explain_sigkill() override;

  private:
    struct Watch;
    std::unique_ptr<Watch> memory_kills_;
};

}  // namespace ensemble
