// The fleet: one PortRuntime per port the supervisor runs, and everything that changes them —
// spawning and stopping workers, adopting survivors of an earlier supervisor, reaping exits,
// restarting failures under the restart policy, and the operator's commands (fleet_commands.cpp).
// Desired assignments are written to the state store before they are acted on.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "os/asio.h"
#include "os/process_identity.h"
#include "os/recorded_process.h"
#include "profiles/config.h"
#include "profiles/memory_estimate.h"
#include "protocol/messages.h"
#include "state/store.h"
#include "supervisor/memory_budget.h"
#include "supervisor/port_state.h"
#include "supervisor/restart_policy.h"
#include "supervisor/system.h"
#include "supervisor/worker_spawner.h"

namespace ensemble {

// The supervisor's end of one worker's workers.sock connection.
class WorkerLinkPeer {
  public:
    virtual ~WorkerLinkPeer() = default;
    virtual void send(const nlohmann::json& message) = 0;
    virtual void close() = 0;
    // The connected process as the kernel named it when it connected, with its start time read
    // then (nullopt when the OS does not say, or it was already gone).
    virtual std::optional<ProcessIdentity> identity() const = 0;
};

struct PortRuntime {
    using Clock = std::chrono::steady_clock;

    int port = 0;
    std::string handle;
    std::string profile;
    PortState state = PortState::stopped;
    std::unique_ptr<WorkerProcess> process;  // set when this supervisor spawned the worker
    std::int64_t pid = 0;
    std::int64_t pid_start_time = 0;
    std::string worker_id;
    std::string token;
    WorkerLinkPeer* link = nullptr;
    protocol::WorkerStats stats;
    double tokens_per_s = 0;  // over the last heartbeat interval of at least 1 s
    std::uint64_t rate_tokens = 0;
    Clock::time_point rate_since{};
    Clock::time_point started{};
    std::optional<Clock::time_point> ready_since;  // first ready of this worker's run
    Clock::time_point adopt_deadline{};  // while re-adopting: how long to wait for it to register
    Clock::time_point last_heartbeat{};
    // Set when the worker was found unwell (no heartbeats, failed probes) and sent SIGTERM; it
    // gets SIGKILL if it is still there a kill grace later. The reason prefixes its exit's.
    Clock::time_point hung_since{};
    std::string kill_reason;
    int probe_misses = 0;  // GET /health failures in a row on the public port
    bool probe_in_flight = false;
    std::int64_t started_unix_ms = 0;
    int restarts = 0;
    std::string last_failure;
    std::vector<std::string> last_log_lines;
    RestartPolicy policy;
    bool stop_requested = false;
    // One per spawn, unique across ports and their lifetimes (Fleet::next_attempt): a timer
    // set for an earlier run, even of a port since unloaded and loaded again, never matches.
    std::uint64_t attempt = 0;
    std::filesystem::path worker_log;
    std::filesystem::path engine_log;
    // How the running worker was started (for an adopted one: as the config said when it was
    // adopted), so `reload` reports what a restart would change — and only that.
    WorkerCommand command;
    // The memory budget's view (fleet_memory.cpp): the estimate made when the worker was
    // started (or why there is none), and when the port last served a request.
    std::optional<MemoryEstimate> estimate;
    std::string estimate_error;
    Clock::time_point last_used{};
    std::uint64_t last_requests = 0;
};

// Where a port stands when memory must be freed.
struct PortPolicy {
    int priority = 0;
    EvictPolicy evict = EvictPolicy::never;
};

class Fleet {
  public:
    using Clock = std::chrono::steady_clock;

    // With the real clock, processes and workers.
    Fleet(asio::io_context& io, Config config, std::unique_ptr<StateStore> store,
          WorkerSpawner spawner);
    // With the given ones (the fleet's unit tests pass fakes).
    struct System {
        std::unique_ptr<Scheduler> time;
        std::unique_ptr<ProcessOps> processes;
        std::unique_ptr<WorkerLauncher> launcher;
    };
    Fleet(asio::io_context& io, Config config, std::unique_ptr<StateStore> store, System system);
    ~Fleet();

    // Start-up: re-adopt live workers, start what should run, stop what should not; with no
    // assignments at all on a first start, load the config's boot profile.
    void reconcile();
    // Periodic and on SIGCHLD: reap exits, expire adoptions, kill what ignored a stop.
    void tick();
    // Stops every worker (systemctl stop, Ctrl-C): drains them and waits, up to `timeout`.
    awaitable<void> stop_all(std::chrono::milliseconds timeout);

    // workers.sock
    Status on_register(WorkerLinkPeer* peer, const protocol::Register& message);
    void on_heartbeat(WorkerLinkPeer* peer, const protocol::WorkerStats& stats);
    void on_link_closed(WorkerLinkPeer* peer);

    // control.sock: one request, one reply (fleet_commands.cpp).
    awaitable<nlohmann::json> handle(const protocol::ControlRequest& request);

    // "3 ports: 2 ready, 1 loading", for the service manager's status line.
    std::string summary() const;

    const Config& config() const { return config_; }
    std::size_t size() const { return ports_.size(); }

  private:
    // fleet.cpp: the runtime
    PortRuntime& runtime(int port);
    PortRuntime* find(int port);
    bool move(PortRuntime& rt, PortEvent event, const std::string& reason);
    void event(int port, const std::string& kind, const std::string& message);
    // A state-database write the fleet goes on without (the change it records has happened):
    // its failure is logged with what the next start will not know.
    void log_unsaved(const Status& saved, const std::string& what);
    // A new run of `rt`: timers of its earlier runs (and of any earlier runtime of the same
    // port, erased by an unload) see another attempt and do nothing.
    void next_attempt(PortRuntime& rt) { rt.attempt = ++attempts_; }
    // An adopted worker is taken to run what the config says it should.
    void note_adopted_command(PortRuntime& rt);
    // The port's memory estimate from the config (what the budget charges it).
    void refresh_estimate(PortRuntime& rt);
    Status start_worker(PortRuntime& rt);
    // start_worker, and on ensembled's own shortage a retry in a moment that the port is not
    // blamed for; any other failure is the port's (on_worker_gone).
    void start_or_retry(PortRuntime& rt, std::chrono::seconds retry = std::chrono::seconds(1));
    void stop_worker(PortRuntime& rt, const std::string& reason);
    void on_worker_gone(PortRuntime& rt, const std::string& how);
    // A worker this ensembled has no record of (state.db lost) that says it serves what its
    // port should (or a port nothing is assigned to): adopted, and its records rebuilt. The
    // refusal says why not.
    Status adopt_unrecorded(WorkerLinkPeer* peer, const protocol::Register& m);
    // Workers told to stop because they could not be adopted: SIGKILL if still there after
    // the kill grace (proven by pid and start time), then their engine is stopped.
    struct Dismissed {
        int port = 0;
        ProcessIdentity identity;
        Clock::time_point deadline;
        bool killed = false;
    };
    void dismiss(int port, const ProcessIdentity& identity, const std::string& who);
    void escalate_dismissed(Clock::time_point now);
    // A worker told to stop that still holds `port` (it drains first), if any: nothing is
    // started there until it has gone.
    std::optional<pid_t> dismissed_holder(int port) const;
    void schedule_restart(PortRuntime& rt, std::chrono::milliseconds delay);
    void check_heartbeat(PortRuntime& rt, Clock::time_point now);
    void rotate_logs(Clock::time_point now);
    void probe_ports(Clock::time_point now);
    awaitable<void> probe_port(int port, std::uint64_t attempt);
    // SIGTERM (and SIGCONT) now, SIGKILL after the kill grace: for a worker found unwell.
    void kill_unwell(PortRuntime& rt, const std::string& reason, Clock::time_point now);
    void escalate_kill(PortRuntime& rt, Clock::time_point now);
    void save_record(const PortRuntime& rt);
    // Sends `signal` to the port's worker: directly to our own child, to an adopted one only
    // after proving its identity again. Whether it was sent.
    bool signal_worker(const PortRuntime& rt, int signal);
    // Kills the engine a dead worker left running, once proven ours, and says so in the events.
    void stop_engine_left_behind(int port, const EngineRecord& recorded, const std::string& boot);
    const PortAssignment* overrides_for(const PortRuntime& rt) const;
    void wake();
    // Waits until `done(rt)` holds for the port, or the deadline passes; returns whether it held.
    awaitable<bool> wait_for(int port, const std::function<bool(const PortRuntime&)>& done,
                             Clock::time_point deadline);
    awaitable<bool> wait_settled(int port, Clock::time_point deadline);  // ready, or clearly not
    awaitable<bool> wait_stopped(int port, Clock::time_point deadline);

    // fleet_memory.cpp: the memory budget
    std::optional<std::uint64_t> budget_bytes() const;
    const PortAssignment* assignment_in(const std::string& profile, int port,
                                        const std::string& handle) const;
    Result<MemoryEstimate> estimate_for(int port, const std::string& handle,
                                        const std::string& profile) const;
    PortPolicy policy_for(int port, const std::string& handle, const std::string& profile) const;
    std::vector<BudgetHolder> budget_holders(Clock::time_point now) const;
    void note_activity(PortRuntime& rt, Clock::time_point now);
    // nullopt when `starts` (port -> model) fit once `released` stop, after evicting what the
    // plan says; otherwise the refusal to return, with nothing changed.
    awaitable<std::optional<nlohmann::json>> admit(const std::map<int, std::string>& starts,
                                                   const std::set<int>& released,
                                                   const std::string& profile);
    void check_budget(Clock::time_point now);
    // Why the boot profile does not fit the budget on an empty machine, if it does not.
    std::optional<std::string> boot_refusal(const Profile& profile) const;
    void evict(PortRuntime& rt, const std::string& reason);
    nlohmann::json memory_json(const PortRuntime& rt) const;
    nlohmann::json budget() const;

    // fleet_commands.cpp: the operator's verbs
    awaitable<nlohmann::json> load(int port, const std::string& handle, const std::string& profile);
    awaitable<nlohmann::json> unload(int port);
    awaitable<nlohmann::json> swap(int port, const std::string& handle);
    awaitable<nlohmann::json> restart(int port);
    awaitable<nlohmann::json> profile_load(const std::string& name);
    awaitable<nlohmann::json> profile_unload();
    nlohmann::json status() const;
    nlohmann::json profile_list();
    nlohmann::json logs(int port, int lines) const;
    nlohmann::json events(int lines);
    nlohmann::json reload();
    nlohmann::json port_json(const PortRuntime& rt) const;
    Status check_port_free(int port) const;
    awaitable<bool> replace_worker(int port, const std::string& handle, const std::string& profile);

    Clock::time_point now() const { return time_->now(); }

    asio::io_context& io_;
    Config config_;
    std::unique_ptr<StateStore> store_;
    std::unique_ptr<Scheduler> time_;
    std::unique_ptr<ProcessOps> processes_;
    std::unique_ptr<WorkerLauncher> launcher_;
    std::map<int, std::unique_ptr<PortRuntime>> ports_;
    Clock::time_point started_;
    bool command_running_ = false;
    bool shutting_down_ = false;  // stop_all has begun: nothing is started again
    Clock::time_point last_tick_{};
    Clock::time_point last_rotation_{};
    Clock::time_point last_probe_{};
    std::vector<Dismissed> dismissed_;
    std::uint64_t attempts_ = 0;  // the last PortRuntime::attempt handed out
    // Ports the operator unassigned since this ensembled started: a worker without a record
    // that turns up on one is not adopted back.
    std::set<int> unassigned_;
    bool over_budget_ = false;
    Clock::time_point last_enforced_{};
};

// The last `lines` lines of a text file (bounded read from the end).
std::vector<std::string> tail_lines(const std::filesystem::path& path, int lines);

}  // namespace ensemble
