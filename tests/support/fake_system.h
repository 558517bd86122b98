// A pretend machine for the fleet's unit tests (supervisor/system.h): a clock that moves only
// when told, a process table, workers that are records rather than processes, and links that
// record what the supervisor sends. A worker behaves as a well-made one does — it exits when
// told to stop, or on SIGTERM or SIGKILL — unless a test says otherwise.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "supervisor/fleet.h"
#include "supervisor/system.h"
#include "supervisor/worker_spawner.h"

namespace ensemble::testing {

// Time that moves only in advance_to(): timers run and sleepers wake in order of their time,
// with the io_context run empty in between, so the coroutines see each moment.
class FakeScheduler final : public Scheduler {
  public:
    // Well after the clock's epoch: a zero time_point means "unset" to the fleet.
    static constexpr auto kStart = std::chrono::hours(1000);
    static constexpr std::int64_t kStartUnixMs = 1'790'000'000'000;

    explicit FakeScheduler(asio::io_context& io) : io_(io) {}
    Clock::time_point now() const override { return now_; }
    std::int64_t unix_ms() const override;
    void after(std::chrono::milliseconds delay, std::function<void()> fn) override;
    awaitable<void> sleep_until(Clock::time_point deadline) override;
    void wake_sleepers() override;

    void advance_to(Clock::time_point to);
    void advance(std::chrono::milliseconds by) { advance_to(now_ + by); }
    void run_ready();  // what can run at this moment, until nothing can

  private:
    struct Sleeper {
        Clock::time_point deadline;
        steady_timer* timer;
    };
    std::optional<Clock::time_point> next_due() const;

    asio::io_context& io_;
    Clock::time_point now_{kStart};
    std::uint64_t order_ = 0;
    std::map<std::pair<Clock::time_point, std::uint64_t>, std::function<void()>> timers_;
    std::vector<Sleeper*> sleepers_;
};

// A worker as the pretend machine knows it.
struct FakeWorker {
    pid_t pid = 0;
    std::int64_t start_time = 0;
    int port = 0;
    std::string handle;
    WorkerLaunch launch;
    std::optional<ExitStatus> exit;  // set when it ended
    bool reaped = false;
    bool ignores_stop = false;  // drains forever: only SIGKILL ends it
    int listening_fd = -1;      // the socket it was handed
    WorkerSlot slot;            // its files, and whether it was started to stand by
};

struct SentSignal {
    pid_t pid = 0;
    int signal = 0;
    bool proven = false;  // through signal_if_ours (not our child)
};

class FakeWorld {
  public:
    // A process that runs now (pid -> start time); a worker's, or anyone's.
    std::map<pid_t, std::int64_t> processes;
    std::set<pid_t> unreadable;  // their identity cannot be read (check: unknown)
    std::map<pid_t, std::shared_ptr<FakeWorker>> workers;
    std::set<int> busy_ports;  // bound by a process that is not ours
    std::vector<SentSignal> signals;
    std::vector<std::string> told;     // "PID stop", "PID serve": what workers' links were sent
    std::vector<std::string> spawned;  // "PORT model", in order
    std::vector<Scheduler::Clock::time_point> spawned_at;
    const Scheduler* clock = nullptr;  // what spawned_at reads
    // What SIGCHLD would do in ensembled: called when a worker ends.
    std::function<void()> on_worker_end;
    std::vector<int> engines_stopped;  // ports whose left-behind engine was looked for
    std::vector<std::filesystem::path> engine_records_checked;  // in the same order
    std::map<int, int> listening_sockets_opened;                // per port
    std::string boot = "boot-1";
    std::string spawn_error_code;           // when set, every spawn fails with it
    std::set<std::string> dead_on_arrival;  // models whose workers exit at once (cannot load)

    // A process of someone else's, or a worker of an earlier ensembled.
    pid_t start_process();
    std::shared_ptr<FakeWorker> start_worker(int port, const std::string& handle);
    // It ends as the kernel would have it: gone from the table, its status kept for the reaper.
    void end(pid_t pid, ExitStatus status);
    void deliver(pid_t pid, int signal);
    std::shared_ptr<FakeWorker> newest_on(int port) const;
    int signals_to(pid_t pid, int signal) const;

  private:
    pid_t next_pid_ = 4000;
    std::int64_t next_start_ = 900'000;
};

class FakeProcesses final : public ProcessOps {
  public:
    explicit FakeProcesses(FakeWorld& world) : world_(world) {}
    Result<ProcessIdentity> identify(pid_t pid) const override;
    IdentityCheck check(const ProcessIdentity& recorded) const override;
    void signal_child(pid_t pid, int signal) override;
    KillReport signal_if_ours(const ProcessIdentity& process, int signal,
                              const std::string& what) override;
    std::string boot_id() const override { return world_.boot; }
    Status port_free(const std::string& host, int port) const override;
    std::string port_holder(int port) const override {
        return "held by squatter (pid " + std::to_string(20000 + port) + ")";
    }
    // A real listening socket on `host`, on a port the kernel picks (never the port asked for).
    Result<ListeningSocket> listen(const std::string& host, int port) override;
    std::vector<std::string> stop_engine_left_behind(const std::filesystem::path& record_path,
                                                     const EngineRecord& told,
                                                     const std::string& boot,
                                                     const std::string& what) override;
    std::string explain_sigkill() override { return ""; }

  private:
    FakeWorld& world_;
};

// Plans as ensembled does (the real WorkerSpawner's plan); starts FakeWorkers.
class FakeLauncher final : public WorkerLauncher {
  public:
    explicit FakeLauncher(FakeWorld& world)
        : world_(world), planner_("/nonexistent/ensemble-worker", "/nonexistent/workers.sock") {}
    Result<WorkerLaunch> plan(const Config& config, int port, const std::string& handle,
                              const PortAssignment* overrides,
                              const WorkerSlot& slot) const override;
    Result<SpawnedWorker> spawn(const Config& config, int port, const std::string& handle,
                                const PortAssignment* overrides, const ListeningSocket& listening,
                                WorkerSlot slot) const override;

  private:
    FakeWorld& world_;
    WorkerSpawner planner_;
};

// The supervisor's end of a worker's link: records what it is sent, and a worker that is told
// to stop does (unless it ignores stops).
class FakeLink final : public WorkerLinkPeer {
  public:
    FakeLink(FakeWorld& world, std::shared_ptr<FakeWorker> worker)
        : world_(world), worker_(std::move(worker)) {}
    void send(const nlohmann::json& message) override;
    void close() override { closed = true; }
    std::optional<ProcessIdentity> identity() const override;

    std::vector<nlohmann::json> sent;
    bool closed = false;

  private:
    FakeWorld& world_;
    std::shared_ptr<FakeWorker> worker_;
};

}  // namespace ensemble::testing
