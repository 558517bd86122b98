// The fleet: the ports the supervisor runs (port.h: each owns its worker's life) and what no
// single port decides — matching them to the desired assignments at start-up (reconcile),
// adopting workers that have no record, stopping workers that may not stay, the memory budget
// (fleet_memory.cpp) and the operator's commands (fleet_commands.cpp). Desired assignments are
// written to the state store before they are acted on.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "os/asio.h"
#include "os/process_identity.h"
#include "os/recorded_process.h"
#include "profiles/config.h"
#include "profiles/memory_estimate.h"
#include "protocol/messages.h"
#include "state/store.h"
#include "supervisor/memory_budget.h"
#include "supervisor/port.h"
#include "supervisor/port_state.h"
#include "supervisor/restart_policy.h"
#include "supervisor/system.h"
#include "supervisor/worker_spawner.h"

namespace ensemble {

// Where a port stands when memory must be freed.
struct PortPolicy {
    int priority = 0;
    EvictPolicy evict = EvictPolicy::never;
};

// The fleet's answers to the operator's verbs, as values: supervisor/control_api.h turns them
// into replies.

// One port: its snapshot and what the config and the memory policy say of it.
struct PortReport {
    PortSnapshot port;
    PortPolicy policy;
    std::optional<ModelSpec> model;  // nullopt when the config does not define it (any more)
    std::int64_t uptime_s = 0;       // serving for, while ready
    // A swap's incoming worker, loading beside the serving one.
    struct Incoming {
        std::string model;
        PortState state = PortState::starting;
        std::optional<LoadProgress> load;
    };
    std::optional<Incoming> incoming;
};

// `ensemble budget`: the budget, who holds what of it, and the GPU wired limit (macOS).
struct BudgetReport {
    struct Holder {
        BudgetHolder holder;
        double share = 0;  // of the budget
    };
    struct WiredLimit {
        bool applies = false;
        std::uint64_t bytes = 0;
        std::string source;
        std::uint64_t configured_bytes = 0;
        std::uint64_t mlx_bytes = 0;  // charged to the running MLX ports
        std::vector<std::string> warnings;
    };
    std::string budget;  // as configured: "170GiB", "85%", or empty
    std::uint64_t budget_bytes = 0;
    std::uint64_t physical_bytes = 0;
    std::uint64_t budgetable_bytes = 0;
    std::uint64_t reserved_bytes = 0;
    std::uint64_t measured_bytes = 0;
    std::uint64_t free_bytes = 0;
    bool over_budget = false;
    std::vector<Holder> ports;
    WiredLimit wired;
};

// The front door (supervisor.front_door), as ensembled's keeper of it sees it.
enum class FrontDoorState { serving, starting, restarting, waiting, stopping, stopped };
inline constexpr std::array kFrontDoorStates{FrontDoorState::serving,    FrontDoorState::starting,
                                             FrontDoorState::restarting, FrontDoorState::waiting,
                                             FrontDoorState::stopping,   FrontDoorState::stopped};
std::string_view to_string(FrontDoorState state);
struct FrontDoorReport {
    std::string listen;  // host:port
    FrontDoorState state = FrontDoorState::waiting;
    int pid = 0;                  // 0: none known
    std::int64_t uptime_s = 0;    // serving for, since it linked to this ensembled
    int restarts = 0;             // exits this ensembled started it again after
    std::size_t loads_asked = 0;  // loads on demand it asked for, under way
};

struct FleetStatus {
    std::vector<PortReport> ports;
    std::optional<FrontDoorReport> front_door;  // when the config has one
    BudgetReport budget;
    std::vector<std::string> warnings;
    std::filesystem::path config;
    std::string bind_host;
    std::int64_t uptime_s = 0;
};

struct ProfileListing {
    std::string name;
    std::map<int, std::string> ports;  // port -> model
    bool active = false;
};

// A profile load: every port's report; `complete` when each of them is ready.
struct ProfileLoad {
    std::string name;
    std::vector<PortReport> ports;
    bool complete = false;
};

struct PortLogs {
    std::filesystem::path engine_log;
    std::filesystem::path worker_log;
    std::vector<std::string> engine;
    std::vector<std::string> worker;
};

class Fleet final : private PortHost {
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
    // `port_socket`: the port's listening socket, when the worker handed it back (checked).
    Status on_register(WorkerLinkPeer* peer, const protocol::Register& message,
                       std::optional<ListeningSocket> port_socket = std::nullopt);
    void on_heartbeat(WorkerLinkPeer* peer, const protocol::WorkerStats& stats);
    void on_link_closed(WorkerLinkPeer* peer);

    // The operator's verbs (fleet_commands.cpp). Those that change the fleet run one at a
    // time, in arrival order: each holds the turn from wait_turn() to end_turn().
    awaitable<void> wait_turn();
    void end_turn();
    // `force`: supervisor.reserved_ports may be used.
    awaitable<Result<PortReport>> load(int port, const std::string& handle,
                                       const std::string& profile, bool force = false);
    // `reason`: what the port's stop says (events, status).
    static constexpr const char* kUnloadedByOperator = "unloaded by the operator";
    awaitable<Status> unload(int port, std::string reason = kUnloadedByOperator);
    awaitable<Result<PortReport>> swap(int port, const std::string& handle);
    awaitable<Result<PortReport>> restart(int port);
    awaitable<Result<ProfileLoad>> profile_load(const std::string& name, bool force = false);
    // Stops the named profile's ports (those still serving what it assigned), or, with no
    // name, every port. The ports stopped.
    awaitable<Result<std::vector<int>>> profile_unload(const std::string& name);
    FleetStatus status() const;
    BudgetReport budget() const;  // fleet_memory.cpp
    std::vector<ProfileListing> profiles() const;
    Result<PortLogs> logs(int port, int lines) const;
    // The newest `lines` events; with `after_id`, the first `lines` after it (a follower's
    // cursor: none skipped).
    Result<std::vector<Event>> events(int lines, std::int64_t after_id = 0) const;
    // Reads the config file again; the ports whose worker would now start differently.
    Result<std::vector<int>> reload();

    // The front door (fleet_on_demand.cpp): every model of the config and where it is served;
    // a load of `handle` on a free port of front_door.ports (the caller holds the turn), or
    // nothing when a port serves it or brings it up already.
    std::vector<protocol::Route> routes() const;
    awaitable<Result<PortReport>> load_on_demand(const std::string& handle);
    // Ollama's keep_alive, from the front door: how long the model on a pool port stays once
    // idle, for this load of it (ports outside the pool keep their models: ignored). Whether
    // it was taken.
    bool keep_alive(const protocol::KeepAlive& keep_alive);
    // Called whenever a port may have changed (the front door's routes are sent again).
    std::function<void()> on_change;
    // The front door's report for status (set by ensembled when the config has one).
    std::function<FrontDoorReport()> front_door_report;

    // An event of the fleet's log (`ensemble events`, the status page): the front door's.
    void record_event(int port, const std::string& kind, const std::string& message) {
        event(port, kind, message);
    }

    // A command nobody waited for failed ("wait": false): an event, kind "command_failed".
    void note_failure(int port, std::string_view verb, const std::string& message);

    // "2 ports (1 loading, 1 ready): 8100 coder ready, 8101 chat loading", for the service
    // manager's status line (the first 8 ports by number are named).
    std::string summary() const;

    const Config& config() const override { return config_; }
    std::size_t size() const { return ports_.size(); }

  private:
    // PortHost: what the ports act through (and config(), above).
    Scheduler& time() override { return *time_; }
    ProcessOps& processes() override { return *processes_; }
    WorkerLauncher& launcher() override { return *launcher_; }
    StateStore& store() override { return *store_; }
    void event(int port, const std::string& kind, const std::string& message) override;
    void log_unsaved(const Status& saved, const std::string& what) override;
    std::uint64_t next_attempt() override { return ++attempts_; }
    void changed() override { wake(); }
    Port* find_run(int port, std::uint64_t attempt) override;
    bool shutting_down() const override { return shutting_down_; }
    std::optional<pid_t> dismissed_holder(int port) const override;
    Result<std::optional<UpstreamLink>> upstream_link(const PortSnapshot& dependent,
                                                      Upstream which) const override;

    // fleet.cpp: the ports
    Port* find(int port);
    const Port* find(int port) const;
    // Every worker run: the ports' serving ones, then those beside them (side_runs_).
    void for_each_run(const std::function<void(Port&)>& visit);
    // The run that started (or adopted) the worker registering as `m`, if any.
    Port* expecting(const protocol::Register& m);
    bool has_side_run(int port) const;
    Port& port_at(int number);  // created (stopped) if it is not there
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
    void rotate_logs(Clock::time_point now);
    // Chained models: a waiting one starts once its upstream is ready; a running one whose
    // upstream is gone (unloaded, swapped away, failed, moved) stops and waits for it.
    void follow_upstreams();
    // Why a running chained model must stop and wait (its upstream gone, failed or moved), if so.
    std::optional<std::string> upstream_gone(const PortSnapshot& dependent) const;
    // A port serving `upstream` (per `which`), preferring the one `profile` assigns it, then the
    // lowest; `except` does not count. Else one assigned it, for the reason.
    struct UpstreamSearch {
        const Port* found = nullptr;
        const Port* seen = nullptr;
        const Port* loops = nullptr;  // serves it, but its chain runs in front of `except`
    };
    // Whether the chain of workers `start` runs in front of (as started) reaches `port`.
    bool leads_to(const Port& start, int port) const;
    UpstreamSearch find_upstream(const std::string& upstream, const std::string& profile,
                                 Upstream which, int except = 0) const;
    static std::string upstream_reason(const std::string& upstream, const UpstreamSearch& search);
    UpstreamLink link_to(const Port& upstream) const;
    // Refused unless the chained model `handle`'s upstream is served on another port (ready or
    // coming): otherwise it would wait for something nobody is going to load.
    Status check_upstream_served(int port, const std::string& handle,
                                 const std::string& profile) const;
    // The rest of the chain `upstream` starts must not lead back to `port` either.
    Status check_chain_avoids(int port, const std::string& handle, const Port& upstream) const;
    void probe_ports(Clock::time_point now);
    awaitable<void> probe_port(int port, std::uint64_t attempt);
    void wake();
    // Waits until `done(port)` holds for the port, or the deadline passes; returns whether it held.
    awaitable<bool> wait_for(int port, const std::function<bool(const PortSnapshot&)>& done,
                             Clock::time_point deadline);
    awaitable<bool> wait_until(const std::function<bool()>& done, Clock::time_point deadline);
    awaitable<bool> wait_settled(int port, Clock::time_point deadline);  // ready, or clearly not
    awaitable<bool> wait_stopped(int port, Clock::time_point deadline);

    // fleet_on_demand.cpp
    bool in_pool(int port) const;  // one of front_door.ports
    struct KeptAlive;
    // The keep_alive of the load on pool port `port`, if one was given for it.
    const KeptAlive* kept_alive(const Port& port) const;
    // At start-up: the keep_alive of each adopted load on demand, as the last ensembled had it.
    void restore_kept_alive();
    // The port's keep_alive ends (it is unloaded): in memory and in the state database.
    void forget_kept_alive(int port);
    // How long it may stay idle: its keep_alive, else front_door.evict_idle_after; nullopt:
    // for ever.
    std::optional<Clock::duration> idle_limit(const Port& port) const;
    // Since when it has been idle.
    Clock::time_point idle_since(const Port& port) const;
    // Whether it has been idle that long.
    bool idle_expired(const Port& port, Clock::time_point now) const;
    // Unloads an on-demand load idle for its idle_limit (one per tick).
    void unload_idle_on_demand(Clock::time_point now);
    awaitable<void> unload_idle(int port, std::uint64_t attempt);

    // fleet_memory.cpp: the memory budget
    std::optional<std::uint64_t> budget_bytes() const;
    Result<MemoryEstimate> estimate_for(int port, const std::string& handle,
                                        const std::string& profile) const;
    PortPolicy policy_for(int port, const std::string& handle, const std::string& profile) const;
    // What holds memory: the ports' serving workers and, unless `serving_only`, the workers
    // beside them (side_runs_).
    enum class Runs { all, serving_only };
    std::vector<BudgetHolder> budget_holders(Clock::time_point now, Runs runs = Runs::all) const;
    // Ok when `starts` (port -> model) fit once `released` stop, after evicting what the plan
    // says; otherwise the refusal, with nothing changed.
    awaitable<Status> admit(const std::map<int, std::string>& starts, const std::set<int>& released,
                            const std::string& profile);
    void check_budget(Clock::time_point now);
    // Why the boot profile does not fit the budget on an empty machine, if it does not.
    std::optional<std::string> boot_refusal(const Profile& profile) const;
    void evict(Port& port, const std::string& reason);

    // fleet_commands.cpp
    PortReport report(const Port& port) const;
    // The port belongs to the active profile only while it serves what the profile says.
    std::string active_profile_for(int port, const std::string& handle) const;
    Status check_port_free(int port) const;
    // The same, for a load or a profile: a busy port's error also names its holder.
    Status check_port_free_for_operator(int port) const;
    awaitable<bool> replace_worker(int port, const std::string& handle, const std::string& profile);
    // Whether `handle` fits on `port` beside the model serving there now, evicting nothing: by
    // the budget, or with none configured by the memory the machine can budget at all.
    bool fits_beside(int port, const std::string& handle, const std::string& profile) const;
    // The swap that fails no request: the new worker loads beside the serving one and takes
    // the port's connections only once ready; a failure leaves the old one serving.
    awaitable<Result<PortReport>> swap_beside(int port, const std::string& handle,
                                              const std::string& profile);
    Error shutting_down_error(int port, const std::string& handle) const;

    Clock::time_point now() const { return time_->now(); }

    asio::io_context& io_;
    Config config_;
    std::unique_ptr<StateStore> store_;
    std::unique_ptr<Scheduler> time_;
    std::unique_ptr<ProcessOps> processes_;
    std::unique_ptr<WorkerLauncher> launcher_;
    std::map<int, std::unique_ptr<Port>> ports_;
    // Worker runs beside the ports' serving ones (Port::Role): a swap's incoming worker while it
    // loads, and a worker a swap replaced while it drains (dropped once it has gone).
    std::vector<std::unique_ptr<Port>> side_runs_;
    Clock::time_point started_;
    bool command_running_ = false;
    bool shutting_down_ = false;  // stop_all has begun: nothing is started again
    Clock::time_point last_tick_{};
    Clock::time_point last_rotation_{};
    Clock::time_point last_probe_{};
    std::vector<Dismissed> dismissed_;
    std::uint64_t attempts_ = 0;  // the last Port::attempt handed out
    // Ports the operator unassigned since this ensembled started: a worker without a record
    // that turns up on one is not adopted back.
    std::set<int> unassigned_;
    bool over_budget_ = false;
    // keep_alive by pool port, for the load it was given for (fleet_on_demand.cpp).
    struct KeptAlive {
        std::string handle;
        std::uint64_t attempt = 0;             // Port::attempt: this worker's run
        std::optional<Clock::duration> limit;  // nullopt: for ever
        Clock::time_point since;               // when it was given: the request's end
    };
    std::map<int, KeptAlive> kept_alive_;
    Clock::time_point last_enforced_{};
};

}  // namespace ensemble
