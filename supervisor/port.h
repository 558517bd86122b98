// One public port and the worker that serves it: its state (changed only through the state
// machine, port_state.h), its worker's life — start, stop, exit, kill when unwell, escalate to
// SIGKILL, adoption of a survivor — its restart policy and its record in the state store.
// The fleet (fleet.h) holds the ports, decides what should run where, and reads each port's
// snapshot; only the port changes itself.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "os/process_identity.h"
#include "profiles/config.h"
#include "profiles/memory_estimate.h"
#include "protocol/messages.h"
#include "state/store.h"
#include "supervisor/load_progress.h"
#include "supervisor/port_state.h"
#include "supervisor/restart_policy.h"
#include "supervisor/system.h"

namespace ensemble {

class Port;
struct PortSnapshot;

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

// What a port needs of the fleet around it.
class PortHost {
  public:
    virtual const Config& config() const = 0;
    virtual Scheduler& time() = 0;
    virtual ProcessOps& processes() = 0;
    virtual WorkerLauncher& launcher() = 0;
    virtual StateStore& store() = 0;
    virtual void event(int port, const std::string& kind, const std::string& message) = 0;
    // A store write the fleet goes on without: logged with what the next start will not know.
    virtual void log_unsaved(const Status& saved, const std::string& what) = 0;
    // Unique across ports and their lifetimes: a timer of an earlier run never matches.
    virtual std::uint64_t next_attempt() = 0;
    // A port changed state: whoever waits for one looks again.
    virtual void changed() = 0;
    // The port's worker run `attempt`, for timers: nullptr once the port was unloaded or the
    // run replaced since they were set.
    virtual Port* find_run(int port, std::uint64_t attempt) = 0;
    virtual bool shutting_down() const = 0;
    // A worker told to stop that still holds `port` (nothing starts there until it has gone).
    virtual std::optional<pid_t> dismissed_holder(int port) const = 0;
    // Where the chained model `dependent` serves finds its upstream: nullopt for a model with no
    // upstream; the error says why it must wait (not served, not ready yet, failed). `ready`:
    // only a port that serves it now; `any`: also one coming back (re-adopting, restarting).
    enum class Upstream { ready, any };
    virtual Result<std::optional<UpstreamLink>> upstream_link(const PortSnapshot& dependent,
                                                              Upstream which) const = 0;

  protected:
    ~PortHost() = default;
};

// What a port is now, for the fleet's commands, memory policy and status.
struct PortSnapshot {
    using Clock = std::chrono::steady_clock;

    int port = 0;
    std::string handle;
    std::string profile;
    PortState state = PortState::stopped;
    std::int64_t pid = 0;  // the worker's; 0 when none runs
    bool linked = false;   // the worker is connected
    bool stop_requested = false;
    protocol::WorkerStats stats;
    double tokens_per_s = 0;  // over the last heartbeat interval of at least 1 s
    // Over the most recent such interval in which the port generated: its speed, kept while idle.
    double last_busy_tokens_per_s = 0;
    int restarts = 0;
    std::string last_failure;
    std::vector<std::string> last_log_lines;
    std::optional<Clock::time_point> ready_since;  // first ready of this worker's run
    Clock::time_point started{};
    // How the running worker was started (for an adopted one: as the config said when it was
    // adopted), so `reload` reports what a restart would change — and only that.
    WorkerCommand command;
    std::filesystem::path worker_log;
    std::filesystem::path engine_log;
    int files = 0;  // which of the port's sets of files the worker uses (WorkerSlot)
    // The memory budget's view: the estimate made when the worker was started (or why there
    // is none), and when the port last served a request.
    std::optional<MemoryEstimate> estimate;
    std::string estimate_error;
    Clock::time_point last_used{};
    bool unwell = false;               // sent SIGTERM for being unwell; SIGKILL follows
    std::optional<LoadProgress> load;  // while the engine loads (LoadTracker)
    // A chained model's: where its worker was started to find its upstream.
    std::optional<UpstreamLink> upstream;
};

class Port {
  public:
    using Clock = std::chrono::steady_clock;

    // What the worker run is to the port: the one serving it; a swap's incoming worker, loading
    // beside it on the port's other set of files and accepting nothing until promoted; or the
    // one a swap replaced, draining. Only the serving run keeps the port's listening socket and
    // its record in the state store.
    enum class Role { serving, incoming, outgoing };

    // `files`: the set of the port's files its workers use (WorkerSlot), until a swap.
    Port(PortHost& host, int port, int files = 0);
    Port(const Port&) = delete;
    Port& operator=(const Port&) = delete;

    const PortSnapshot& snapshot() const { return s_; }
    int number() const { return s_.port; }
    PortState state() const { return s_.state; }
    std::uint64_t attempt() const { return attempt_; }
    const std::string& worker_id() const { return worker_id_; }  // "" before its first

    // What the port is to serve from its next start on; a new assignment forgets the failures
    // of the last.
    void assign(const std::string& handle, const std::string& profile);
    void set_profile(const std::string& profile) { s_.profile = profile; }
    void forget_failures();

    // Starts a worker; on ensembled's own shortage retries in a moment without blaming the
    // port; any other failure is the port's (backoff, or the crash loop). While a worker told
    // to stop still holds the port, waits for it to go.
    void start(std::chrono::seconds retry = std::chrono::seconds(1));
    // How long a worker told to stop has before it is killed: the config's stop_timeout, or the
    // one when it was started if that was longer (a reload shortened the drain since).
    std::chrono::milliseconds stop_timeout() const;
    // Asks the worker to stop (it drains); SIGKILL after stop_timeout(). The port's listening
    // socket is closed once it has stopped — unless another worker is to take it over
    // (a swap, a restart), when connections wait in its backlog meanwhile.
    // `wait_for_upstream`: a chained model whose upstream is gone waits for it (closed).
    enum class Then { close_the_port, hand_the_port_over, wait_for_upstream };
    void stop(const std::string& reason, Then then = Then::close_the_port);
    // SIGKILL now, for a worker told to stop that has not (ensembled's own shutdown ending).
    void kill_now(const std::string& why);
    // The replacement is off (the old worker did not stop in time): close the port once stopped.
    void cancel_hand_over();

    // A swap beside the serving run (fleet_commands.cpp): this run, new, starts as the incoming
    // worker on `files`, with the serving run's listening socket to inherit.
    void start_beside(const ListeningSocket& serving_socket, int files);
    // The serving run gives up the port's listening socket and becomes outgoing (its stop is
    // the fleet's to ask).
    ListeningSocket step_down();
    // The incoming run, ready, becomes the serving one: it holds the socket, its worker is told
    // to serve, its record is saved.
    void promote(ListeningSocket socket);
    Role role() const { return role_; }
    // Stopping for a replacement on this port (a restart, a swap one after the other).
    bool hands_over() const { return hand_over_; }
    // A chained model's worker adopted with no record of its upstream, and none found then:
    // the fleet assumes the one it finds later (Fleet::follow_upstreams).
    bool upstream_unknown() const { return upstream_unknown_; }
    // Stopped to free memory: the reason is also its last failure.
    void evict(const std::string& reason);
    // Restarts after `delay`, unless something else happens to the port first.
    void retry_after(std::chrono::milliseconds delay);
    // A chained model whose upstream is not ready: no worker, the port closed, until the fleet
    // starts it (Fleet::follow_upstreams).
    void wait_for_upstream(const std::string& why);
    // While waiting: the reason, as the upstream changes (no event: entering waiting was one).
    void note_waiting(const std::string& why) { s_.last_failure = why; }
    // A re-adopted chained worker: in front of `upstream`, as far as anyone can tell.
    void assume_upstream(const UpstreamLink& upstream);

    // The port is held by a worker that may be ours (state.db lost): it has `grace` to
    // reconnect and be adopted before the port starts one of its own.
    void wait_for_survivor(std::chrono::seconds grace);
    // A recorded worker whose identity cannot be read: neither adopted nor replaced.
    void leave_unverified(const WorkerRecord& record, const std::string& why);
    // A recorded worker that survived an earlier ensembled: it has kAdoptGrace to reconnect.
    void adopt_recorded(const WorkerRecord& record);
    // A worker with no record that proved who it is (fleet.cpp checks that): taken on.
    void adopt_unrecorded(const protocol::Register& m, const ProcessIdentity& identity);

    // Whether `m` is the worker this port started or adopted (its id and one-time token).
    bool expects(const protocol::Register& m) const;
    // Whether anything runs or is awaited here, so that another worker cannot be adopted.
    bool occupied() const { return s_.pid != 0 || link_ != nullptr; }
    // Whether ensembled holds the port's listening socket (from a start until a final stop).
    bool listening() const { return listener_.is_open(); }
    const ListeningSocket& listening_socket() const { return listener_; }
    // `port_socket`: the worker's copy of the port's listening socket; kept when the port holds
    // none (a survivor of an earlier ensembled), so the port stays open whatever the worker does.
    void on_register(WorkerLinkPeer* peer, std::optional<ListeningSocket> port_socket);
    bool linked_to(const WorkerLinkPeer* peer) const { return link_ == peer; }
    void on_heartbeat(const protocol::WorkerStats& stats);
    void on_link_closed(const WorkerLinkPeer* peer);

    // Periodic: reaps or notices the worker's exit, the hung worker, the late survivor, the
    // SIGKILL due after a SIGTERM. `stalled`: the loop itself did not run for a while.
    void tick(Clock::time_point now, bool stalled);
    // GET /health on the public port: whether one is due, and its outcome (`own_trouble`:
    // ensembled's own shortage, which says nothing about the worker).
    bool wants_probe() const;
    void probe_started() { probe_in_flight_ = true; }
    void on_probe(std::uint64_t attempt, bool ok, const std::string& what,
                  const std::string& own_trouble);

  private:
    // `serving_socket`: an incoming run's, lent by the serving run (otherwise the port's own).
    Status start_worker(const ListeningSocket* serving_socket = nullptr);
    bool move(PortEvent event, const std::string& reason, bool save = true);
    void close_if_down();
    void save_record();
    bool signal(int signal);
    void on_gone(const std::string& how);
    void kill_unwell(const std::string& reason, Clock::time_point now);
    void check_heartbeat(Clock::time_point now);
    void escalate_kill(Clock::time_point now);
    // The load's progress from a heartbeat: kept while the engine loads, an event at each
    // quarter, cleared once it is ready.
    void track_load(const protocol::WorkerStats& stats, Clock::time_point now);
    void note_activity(Clock::time_point now);
    void refresh_estimate();
    // `upstream`: the one its record names (nullopt: none recorded, or not a chained model).
    void take_on(std::int64_t pid, std::int64_t start_time, const std::string& worker_id,
                 const std::string& token, std::optional<UpstreamLink> upstream);

    PortHost& host_;
    PortSnapshot s_;
    Role role_ = Role::serving;
    // The public port's listening socket, held while the port is assigned and not down for
    // good: workers come and go, connections wait in its backlog in between.
    ListeningSocket listener_;
    bool hand_over_ = false;                  // stopping for a replacement: keep listener_
    bool then_wait_ = false;                  // stopping to wait for the upstream
    std::unique_ptr<WorkerProcess> process_;  // set when this supervisor spawned the worker
    // The config's when this worker was started, which covered the drain it was given.
    std::chrono::milliseconds stop_timeout_at_start_{0};
    std::optional<ExitStatus> exited_;  // reaped, not yet explained (see tick)
    Clock::time_point exited_at_{};
    std::int64_t pid_start_time_ = 0;
    std::string worker_id_;
    std::string token_;
    WorkerLinkPeer* link_ = nullptr;
    std::uint64_t rate_tokens_ = 0;
    Clock::time_point rate_since_{};
    LoadTracker load_;                    // this run's engine load, from its heartbeats
    Clock::time_point adopt_deadline_{};  // while re-adopting: how long to wait for it
    Clock::time_point last_heartbeat_{};
    // Set when the worker was found unwell (no heartbeats, failed probes) and sent SIGTERM; it
    // gets SIGKILL if it is still there a kill grace later. The reason prefixes its exit's.
    Clock::time_point hung_since_{};
    std::string kill_reason_;
    int probe_misses_ = 0;  // GET /health failures in a row on the public port
    bool probe_in_flight_ = false;
    bool upstream_unknown_ = false;
    std::int64_t started_unix_ms_ = 0;
    RestartPolicy policy_;
    // One per run (PortHost::next_attempt): a timer set for an earlier one does nothing.
    std::uint64_t attempt_ = 0;
    std::uint64_t last_requests_ = 0;
};

// Stops the engine a dead worker left running on `port` (its set of `files`), once proven ours
// (its record file, and what the worker told us), and says so in the events.
void stop_engine_left_behind(PortHost& host, int port, int files, const EngineRecord& recorded,
                             const std::string& boot);

// The last `lines` lines of a text file (bounded read from the end).
std::vector<std::string> tail_lines(const std::filesystem::path& path, int lines);

}  // namespace ensemble
