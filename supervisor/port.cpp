#include "supervisor/port.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>

#include "protocol/worker_contract.h"
#include "supervisor/memory_budget.h"
#include "supervisor/worker_spawner.h"

namespace ensemble {

namespace {

// A survivor of an earlier supervisor has this long to reconnect.
constexpr auto kAdoptGrace = std::chrono::seconds(10);
constexpr auto kHeartbeatInterval = std::chrono::seconds(1);  // the worker's (supervisor_link)

// Worker exit codes that mean something specific (see docs/WORKER.md).
// `engine_last_exit`: how the worker last said its engine ended (its final heartbeat);
// `logs`: where its logs are to be read.
std::string explain_exit(const ExitStatus& status, int port, const std::string& engine_last_exit,
                         const std::string& logs) {
    using protocol::WorkerExit;
    if (status.signaled) return status.describe();
    const auto code = " (worker exit code " + std::to_string(status.code) + ")";
    switch (static_cast<WorkerExit>(status.code)) {
        case WorkerExit::port_in_use:
            return "port " + std::to_string(port) + " is in use by another process" + code;
        case WorkerExit::bad_configuration:
            return "the worker rejected its configuration" + code;
        case WorkerExit::engine_not_started:
            return "the engine could not be started" + code;
        case WorkerExit::model_not_loadable: {
            const auto last = engine_last_exit.empty() ? "" : "last: " + engine_last_exit + "; ";
            return "the engine could not load the model (" + last + "worker exit code " +
                   std::to_string(status.code) + "; see " + logs + ")";
        }
        case WorkerExit::ok:
            break;
    }
    return status.describe();
}

}  // namespace

std::vector<std::string> tail_lines(const std::filesystem::path& path, int lines) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return {};
    in.seekg(0, std::ios::end);
    const auto size = static_cast<std::int64_t>(in.tellg());
    const std::int64_t window = std::min<std::int64_t>(size, 256 * 1024);
    in.seekg(size - window);
    std::string text(static_cast<std::size_t>(window), '\0');
    in.read(text.data(), window);
    std::vector<std::string> out;
    std::size_t end = text.size();
    if (end > 0 && text[end - 1] == '\n') --end;
    while (static_cast<int>(out.size()) < lines && end > 0) {
        const auto start = text.rfind('\n', end - 1);
        const auto begin = start == std::string::npos ? 0 : start + 1;
        out.insert(out.begin(), text.substr(begin, end - begin));
        if (start == std::string::npos) break;
        end = start;
    }
    return out;
}

void stop_engine_left_behind(PortHost& host, int port, int files, const EngineRecord& recorded,
                             const std::string& boot) {
    const auto record_path =
        port_files_in(host.config().supervisor.state_dir, port, files).engine_record;
    const auto what = "the engine left behind by port " + std::to_string(port) + "'s worker";
    for (const auto& done :
         host.processes().stop_engine_left_behind(record_path, recorded, boot, what))
        host.event(port, "engine_left_behind", done);
}

Port::Port(PortHost& host, int port, int files)
    : host_(host), policy_(host.config().supervisor.restart), attempt_(host.next_attempt()) {
    s_.port = port;
    s_.files = files;
}

void Port::assign(const std::string& handle, const std::string& profile) {
    if (handle != s_.handle) s_.restarts = 0;  // another model's restarts are not this one's
    s_.handle = handle;
    s_.profile = profile;
}

void Port::forget_failures() {
    policy_.reset();
    s_.last_failure.clear();
}

bool Port::move(PortEvent ev, const std::string& reason, bool save) {
    const auto next = transition(s_.state, ev);
    if (!next) {
        spdlog::debug("port {}: ignored {} in state {}", s_.port, to_string(ev),
                      to_string(s_.state));
        close_if_down();  // a restart of a failed port that failed again, say
        return false;
    }
    // A failure is always told, even a start failing again in backoff.
    if (*next != s_.state || ev == PortEvent::failed) {
        const char* run = role_ == Role::incoming   ? "incoming worker: "
                          : role_ == Role::outgoing ? "outgoing worker: "
                                                    : "";
        host_.event(
            s_.port, "state",
            run + std::string(to_string(s_.state)) + " -> " + to_string(*next) + ": " + reason);
        // Since when this run has been serving: kept through an engine restart inside the
        // worker, cleared when a new worker starts (start_worker).
        if (*next == PortState::ready && !s_.ready_since) s_.ready_since = host_.time().now();
        s_.state = *next;
        if (s_.state != PortState::starting && s_.state != PortState::loading) {
            load_.reset();  // a load ends with its state: ready, gone, stopped
            s_.load.reset();
        }
        if (save) save_record();
    }
    close_if_down();
    host_.changed();
    return true;
}

void Port::close_if_down() {
    // Down for good (unloaded, evicted, a crash loop, a start that failed after a stop): clients
    // are refused, not kept waiting in a backlog nobody will accept from.
    if ((s_.state == PortState::stopped || s_.state == PortState::failed ||
         s_.state == PortState::waiting) &&
        !hand_over_)
        listener_.close();
}

void Port::save_record() {
    if (role_ != Role::serving) return;  // the port's record is its serving run's
    const auto& port = s_.port;
    if (s_.pid == 0) {
        host_.log_unsaved(host_.store().remove_worker(port),
                          "that port " + std::to_string(port) + " has no worker now");
        return;
    }
    const WorkerRecord r{.port = port,
                         .handle = s_.handle,
                         .worker_id = worker_id_,
                         .token = token_,
                         .pid = s_.pid,
                         .pid_start_time = pid_start_time_,
                         .engine_pid = s_.stats.engine_pid,
                         .engine_start_time = s_.stats.engine_start_time,
                         .engine_group = s_.stats.engine_group,
                         .slot = s_.files,
                         .upstream_handle = s_.upstream ? s_.upstream->handle : "",
                         .upstream_port = s_.upstream ? s_.upstream->port : 0,
                         .upstream_url = s_.upstream ? s_.upstream->url : "",
                         .state = to_string(s_.state),
                         .started_at_ms = started_unix_ms_,
                         .ready_at_ms = 0,
                         .restarts = s_.restarts,
                         .last_exit = s_.last_failure};
    host_.log_unsaved(host_.store().save_worker(r),
                      "port " + std::to_string(port) + "'s worker record");
}

bool Port::signal(int signal) {
    // Reaped already (its exit waits for the worker's last word): the pid is no longer ours.
    if (s_.pid <= 1 || exited_) return false;
    if (process_) {
        // Our own child: its pid cannot belong to anyone else before we reap it.
        host_.processes().signal_child(static_cast<pid_t>(s_.pid), signal);
        return true;
    }
    const auto report =
        host_.processes().signal_if_ours({static_cast<pid_t>(s_.pid), pid_start_time_}, signal,
                                         "the worker of port " + std::to_string(s_.port));
    if (report.outcome == KillOutcome::killed) return true;
    spdlog::warn("port {}: {}", s_.port, report.message);
    return false;
}

void Port::refresh_estimate() {
    if (auto estimate = estimate_assignment(host_.config(), s_.port, s_.handle, s_.profile)) {
        s_.estimate = *estimate;
        s_.estimate_error.clear();
    } else {
        s_.estimate.reset();
        s_.estimate_error = estimate.error().message;
    }
}

Status Port::start_worker(const ListeningSocket* serving_socket) {
    const auto& config = host_.config();
    hand_over_ = false;
    load_.reset();
    s_.load.reset();
    // bind_host changed (a reload, then a restart): the port moves to the new address.
    if (listener_.is_open() && !listener_.bound_to(config.supervisor.bind_host)) listener_.close();
    if (serving_socket == nullptr && !listener_.is_open()) {
        auto opened = host_.processes().listen(config.supervisor.bind_host, s_.port);
        if (!opened) {
            s_.last_failure = opened.error().message;
            host_.event(s_.port, "listen_failed", opened.error().message);
            return opened.error();
        }
        listener_ = std::move(opened).value();
    }
    auto upstream = host_.upstream_link(s_, PortHost::Upstream::ready);
    if (!upstream) {
        s_.last_failure = upstream.error().message;
        return upstream.error();
    }
    auto spawned = host_.launcher().spawn(
        config, s_.port, s_.handle, find_assignment(config, s_.profile, s_.port, s_.handle),
        serving_socket != nullptr ? *serving_socket : listener_,
        WorkerSlot{.files = s_.files, .standby = role_ == Role::incoming, .upstream = *upstream});
    if (!spawned) {
        s_.last_failure = spawned.error().message;
        host_.event(s_.port, "spawn_failed", spawned.error().message);
        return spawned.error();
    }
    process_ = std::move(spawned->process);
    stop_timeout_at_start_ = config.supervisor.health.stop_timeout;  // (it follows the drain)
    exited_.reset();
    refresh_estimate();
    s_.pid = process_->pid();
    const auto identity = host_.processes().identify(static_cast<pid_t>(s_.pid));
    pid_start_time_ = identity ? identity->start_time : 0;
    worker_id_ = spawned->launch.worker_id;
    token_ = spawned->launch.token;
    s_.worker_log = spawned->launch.worker_log;
    s_.engine_log = spawned->launch.engine_log;
    s_.command = spawned->launch.command;
    s_.upstream = *upstream;
    upstream_unknown_ = false;
    link_ = nullptr;
    s_.linked = false;
    s_.stats = {};
    s_.tokens_per_s = s_.last_busy_tokens_per_s = 0;  // a new worker's speed is its own
    probe_misses_ = 0;
    s_.stop_requested = false;
    s_.ready_since.reset();  // a run that fails before it is ever ready was not healthy
    s_.started = host_.time().now();
    started_unix_ms_ = host_.time().unix_ms();
    attempt_ = host_.next_attempt();
    move(PortEvent::spawn, "worker " + worker_id_ + " (pid " + std::to_string(s_.pid) +
                               ") serving '" + s_.handle + "'");
    return Ok{};
}

void Port::start(std::chrono::seconds retry) {
    s_.stop_requested = false;  // a new run: its failures are failures, retried by the policy
    if (const auto holder = host_.dismissed_holder(s_.port)) {
        // A worker told to stop still holds the port while it drains: starting now would only
        // fail (port in use, its engine record locked) and count against the port.
        const auto why = "worker pid " + std::to_string(*holder) +
                         ", told to stop, still holds the port; starting once it has gone";
        if (s_.last_failure != why) host_.event(s_.port, "waiting", why);
        s_.last_failure = why;
        attempt_ = host_.next_attempt();             // no earlier timer starts it: the fleet does
        move(PortEvent::wait, why, /*save=*/false);  // no worker of its own: nothing to record
        return;
    }
    if (role_ == Role::serving) {
        if (auto upstream = host_.upstream_link(s_, PortHost::Upstream::ready); !upstream) {
            wait_for_upstream(upstream.error().message);
            return;
        }
        if (s_.state == PortState::waiting) s_.last_failure.clear();  // a wait is no failure
    }
    auto ok = start_worker();
    if (ok) return;
    if (ok.error().code != "no_resources") {
        on_gone(ok.error().message);
        return;
    }
    // ensembled's own shortage (descriptors, memory, processes): not a failure of the port.
    // Retried at growing intervals, with one event per streak rather than one per try.
    constexpr auto kFirstRetry = std::chrono::seconds(1);
    constexpr auto kMaxRetry = std::chrono::seconds(30);
    s_.last_failure = ok.error().message + "; ensembled's own shortage, not the port's: retrying";
    if (retry == kFirstRetry) {
        host_.event(s_.port, "spawn_deferred",
                    ok.error().message +
                        "; ensembled's own shortage, not the port's: retrying from " +
                        std::to_string(kFirstRetry.count()) + " s, up to every " +
                        std::to_string(kMaxRetry.count()) + " s");
    } else {
        spdlog::debug("port {}: {}; retrying in {} s", s_.port, ok.error().message, retry.count());
    }
    // A chained model whose upstream came back retries from backoff: while `waiting`, the
    // fleet would start it again at every tick.
    if (s_.state == PortState::waiting) move(PortEvent::wait, s_.last_failure, /*save=*/false);
    auto& host = host_;
    const int port = s_.port;
    const auto attempt = attempt_;
    const auto state = s_.state;
    const auto next = std::min(retry * 2, std::chrono::seconds(kMaxRetry));
    host_.time().after(retry, [&host, port, attempt, state, next] {
        auto* p = host.find_run(port, attempt);
        if (host.shutting_down() || p == nullptr || p->s_.state != state || p->s_.stop_requested)
            return;
        p->start(next);
    });
}

void Port::wait_for_upstream(const std::string& why) {
    s_.last_failure = why;
    s_.stop_requested = false;        // the fleet starts it once its upstream is ready
    attempt_ = host_.next_attempt();  // no earlier timer starts it
    s_.upstream.reset();
    hand_over_ = false;  // an operator's restart that found the upstream gone: nothing comes
    refresh_estimate();  // charged while it waits, even when it never ran in this ensembled
    move(PortEvent::wait_upstream, why, /*save=*/false);  // no worker: nothing to record
}

void Port::assume_upstream(const UpstreamLink& upstream) {
    s_.upstream = upstream;
    upstream_unknown_ = false;
    const auto& config = host_.config();
    auto plan = host_.launcher().plan(config, s_.port, s_.handle,
                                      find_assignment(config, s_.profile, s_.port, s_.handle),
                                      WorkerSlot{.files = s_.files, .upstream = s_.upstream});
    if (plan) s_.command = plan->command;
    save_record();  // a later re-adoption knows it (a record from before v4 did not say)
}

void Port::stop(const std::string& reason, Then then) {
    s_.stop_requested = true;
    hand_over_ = then == Then::hand_the_port_over;
    then_wait_ = then == Then::wait_for_upstream;
    if (then_wait_) s_.last_failure = reason;
    if (!move(PortEvent::stop, reason)) return;
    if (s_.state == PortState::stopped) return;  // was in backoff or failed: nothing runs
    if (link_ != nullptr) {
        link_->send(protocol::stop_message());
    } else {
        signal(SIGTERM);
    }
    // A worker that ignores the stop is killed.
    const auto stop_timeout = this->stop_timeout();
    auto& host = host_;
    const int port = s_.port;
    const auto attempt = attempt_;
    host_.time().after(stop_timeout, [&host, port, attempt, stop_timeout] {
        auto* p = host.find_run(port, attempt);
        if (p == nullptr || p->s_.state != PortState::stopping || p->s_.pid == 0) return;
        p->kill_now("the worker did not stop within " + std::to_string(stop_timeout.count()) +
                    " ms");
    });
}

std::chrono::milliseconds Port::stop_timeout() const {
    return std::max(host_.config().supervisor.health.stop_timeout, stop_timeout_at_start_);
}

void Port::kill_now(const std::string& why) {
    if (s_.pid == 0 || !signal(SIGKILL)) return;  // gone already: nothing was killed
    host_.event(s_.port, "kill", why);
    kill_reason_ = why + ", killed";
}

void Port::start_beside(const ListeningSocket& serving_socket, int files) {
    role_ = Role::incoming;
    s_.files = files;
    s_.stop_requested = false;
    // A failure is the swap's to report; the serving run is not touched by it.
    if (auto ok = start_worker(&serving_socket); !ok) on_gone(ok.error().message);
}

ListeningSocket Port::step_down() {
    role_ = Role::outgoing;
    return std::move(listener_);
}

void Port::promote(ListeningSocket socket) {
    role_ = Role::serving;
    listener_ = std::move(socket);
    if (link_ != nullptr) link_->send(protocol::serve_message());
    host_.event(s_.port, "serving",
                "worker pid " + std::to_string(s_.pid) + " serving '" + s_.handle +
                    "' now takes the port's connections");
    save_record();
}

void Port::cancel_hand_over() {
    hand_over_ = false;
    if (s_.state == PortState::stopped || s_.state == PortState::failed) listener_.close();
}

void Port::evict(const std::string& reason) {
    s_.last_failure = "evicted: " + reason;
    stop("evicted: " + reason);
}

void Port::on_gone(const std::string& how) {
    if (link_ != nullptr) link_->close();
    link_ = nullptr;
    s_.linked = false;
    process_.reset();
    s_.pid = 0;
    // Nothing kills an engine whose worker died (macOS has no PR_SET_PDEATHSIG): we do.
    stop_engine_left_behind(
        host_, s_.port, s_.files,
        {s_.stats.engine_pid, s_.stats.engine_start_time, s_.stats.engine_group},
        host_.processes().boot_id());
    s_.stats.engine_pid = 0;
    s_.stats.engine_start_time = 0;
    s_.stats.engine_group = 0;
    s_.stats.memory_bytes = 0;  // nothing of it is measured while no worker runs
    if (s_.stop_requested || s_.state == PortState::stopping) {
        move(PortEvent::exited, "worker exited (" + how + ")");
        save_record();
        if (then_wait_) {
            then_wait_ = false;
            wait_for_upstream(s_.last_failure);
        }
        return;
    }
    s_.last_failure = kill_reason_.empty() ? how : kill_reason_ + ", then " + how;
    hung_since_ = {};
    s_.unwell = false;
    kill_reason_.clear();
    s_.last_log_lines = tail_lines(s_.engine_log, 50);
    const auto worker_lines = tail_lines(s_.worker_log, 10);
    s_.last_log_lines.insert(s_.last_log_lines.end(), worker_lines.begin(), worker_lines.end());
    if (role_ == Role::incoming) {
        // The swap that started it reports the failure; the serving worker serves on.
        move(PortEvent::failed, how + "; not retried: the swap is off");
        return;
    }
    const auto delay = policy_.on_failure(host_.time().now(), s_.ready_since);
    if (!delay) {
        move(PortEvent::crash_loop, "crash loop: " + how + "; stays down until 'ensemble restart " +
                                        std::to_string(s_.port) + "'");
        save_record();
        return;
    }
    ++s_.restarts;
    move(PortEvent::failed, how + "; restarting in " + std::to_string(delay->count()) + " ms");
    save_record();
    retry_after(*delay);
}

void Port::retry_after(std::chrono::milliseconds delay) {
    auto& host = host_;
    const int port = s_.port;
    const auto attempt = attempt_;
    host_.time().after(delay, [&host, port, attempt] {
        auto* p = host.find_run(port, attempt);
        if (host.shutting_down() || p == nullptr || p->s_.state != PortState::backoff) return;
        p->start();
    });
}

void Port::wait_for_survivor(std::chrono::seconds grace) {
    host_.event(s_.port, "port_taken",
                "port " + std::to_string(s_.port) +
                    " is taken, though no worker of this ensembled is recorded on it; waiting " +
                    std::to_string(grace.count()) +
                    " s for a worker of an earlier run to reconnect before starting one");
    move(PortEvent::wait, "waiting for a worker of an earlier run to reconnect", /*save=*/false);
    retry_after(grace);
}

void Port::leave_unverified(const WorkerRecord& r, const std::string& why) {
    s_.handle = r.handle;
    s_.last_failure = "cannot tell whether worker pid " + std::to_string(r.pid) +
                      " from before still runs (" + why +
                      "): not started. If it does not run (ps -p " + std::to_string(r.pid) +
                      "), 'ensemble restart " + std::to_string(r.port) + "' starts a new one";
    host_.event(r.port, "worker_unknown", s_.last_failure);
    // Its record is kept as it is: a later start may be able to tell.
    move(PortEvent::unverifiable, s_.last_failure, /*save=*/false);
}

void Port::take_on(std::int64_t pid, std::int64_t start_time, const std::string& worker_id,
                   const std::string& token, std::optional<UpstreamLink> upstream) {
    s_.pid = pid;
    pid_start_time_ = start_time;
    worker_id_ = worker_id;
    token_ = token;
    adopt_deadline_ = host_.time().now() + kAdoptGrace;
    const auto files = port_files_in(host_.config().supervisor.state_dir, s_.port, s_.files);
    s_.worker_log = files.worker_log;
    s_.engine_log = files.engine_log;
    // What it was started with died with the earlier ensembled: what the config says now.
    const auto& config = host_.config();
    // A chained model's upstream: as its record says, else (no record) where it is now. Should
    // that have gone or moved, the fleet restarts it in front of where it is served.
    if (!upstream) {
        if (auto now_at = host_.upstream_link(s_, PortHost::Upstream::any)) upstream = *now_at;
    }
    s_.upstream = upstream;
    const auto* model = config.find_model(s_.handle);
    upstream_unknown_ = !upstream && model != nullptr && !model->upstream.empty();
    auto plan = host_.launcher().plan(config, s_.port, s_.handle,
                                      find_assignment(config, s_.profile, s_.port, s_.handle),
                                      WorkerSlot{.files = s_.files, .upstream = s_.upstream});
    s_.command = plan ? plan->command : WorkerCommand{};
    refresh_estimate();  // an adopted port holds its share of the budget too
}

void Port::adopt_recorded(const WorkerRecord& r) {
    s_.files = r.slot;
    std::optional<UpstreamLink> upstream;
    if (r.upstream_port != 0)
        upstream = UpstreamLink{r.upstream_handle, r.upstream_port, r.upstream_url};
    take_on(r.pid, r.pid_start_time, r.worker_id, r.token, upstream);
    s_.restarts = r.restarts;
    s_.stats.engine_pid = r.engine_pid;
    s_.stats.engine_start_time = r.engine_start_time;
    s_.stats.engine_group = r.engine_group;
    host_.event(r.port, "adopting",
                "worker pid " + std::to_string(r.pid) + " survived; waiting for it to reconnect");
    // Its record stands as it is until it reconnects (on_register).
    move(PortEvent::adopt, "worker pid " + std::to_string(r.pid) + " survived", /*save=*/false);
}

void Port::adopt_unrecorded(const protocol::Register& m, const ProcessIdentity& identity) {
    attempt_ = host_.next_attempt();  // no timer of an earlier attempt acts on the port now
    s_.files = m.files;               // it said which of the port's files it uses
    take_on(identity.pid, identity.start_time, m.worker_id, m.token, std::nullopt);
    s_.stats = {};
    s_.tokens_per_s = s_.last_busy_tokens_per_s = 0;
    probe_misses_ = 0;
    s_.stop_requested = false;
    s_.ready_since.reset();
    s_.started = host_.time().now();
    started_unix_ms_ = host_.time().unix_ms();
    host_.event(m.port, "adopted",
                "worker pid " + std::to_string(identity.pid) + " serving '" + m.handle +
                    "' had no record here (state.db lost?); adopted from what it says, and its "
                    "records rebuilt");
    move(PortEvent::adopt, "worker pid " + std::to_string(identity.pid) + " adopted");
}

bool Port::expects(const protocol::Register& m) const {
    return worker_id_ == m.worker_id && !token_.empty() && token_ == m.token;
}

void Port::on_register(WorkerLinkPeer* peer, std::optional<ListeningSocket> port_socket) {
    if (port_socket && !listener_.is_open()) {
        listener_ = std::move(*port_socket);
        host_.event(s_.port, "port_socket",
                    "holding port " + std::to_string(s_.port) +
                        "'s listening socket again, handed back by worker pid " +
                        std::to_string(s_.pid));
    }
    if (link_ != nullptr && link_ != peer) link_->close();
    link_ = peer;
    s_.linked = true;
    last_heartbeat_ = host_.time().now();
    if (s_.state == PortState::starting) {
        move(PortEvent::registered,
             process_ == nullptr ? "re-adopted after a supervisor restart" : "worker registered");
    }
    if (s_.state == PortState::stopping) peer->send(protocol::stop_message());
}

void Port::on_heartbeat(const protocol::WorkerStats& stats) {
    const auto now = host_.time().now();
    last_heartbeat_ = now;
    if (stats.tokens < rate_tokens_ || rate_since_ == Clock::time_point{}) {
        rate_tokens_ = stats.tokens;  // a new worker: start counting afresh
        rate_since_ = now;
    } else if (now - rate_since_ >= std::chrono::seconds(1)) {
        const double seconds = std::chrono::duration<double>(now - rate_since_).count();
        s_.tokens_per_s = static_cast<double>(stats.tokens - rate_tokens_) / seconds;
        if (stats.tokens > rate_tokens_) s_.last_busy_tokens_per_s = s_.tokens_per_s;
        rate_tokens_ = stats.tokens;
        rate_since_ = now;
    }
    const bool engine_changed = stats.engine_pid != s_.stats.engine_pid ||
                                stats.engine_start_time != s_.stats.engine_start_time;
    s_.stats = stats;
    if (engine_changed) save_record();  // the engine to kill should this worker die
    note_activity(now);
    if (engine_changed) load_.reset();  // an engine restarted in its load begins again
    track_load(stats, now);
    if (stats.state == "ready") {
        move(PortEvent::engine_ready, "the engine is ready");
    } else if (stats.state == "loading" || stats.state == "restarting") {
        if (s_.state == PortState::ready) {
            const auto why =
                stats.engine_last_exit.empty() ? "" : " (" + stats.engine_last_exit + ")";
            move(PortEvent::engine_loading, "the engine is " + stats.state + why);
        }
    }
}

void Port::track_load(const protocol::WorkerStats& stats, Clock::time_point now) {
    if (stats.state != "loading" && stats.state != "restarting") {
        load_.reset();
        s_.load.reset();
        return;
    }
    load_.observe(stats, s_.estimate ? s_.estimate->total() : 0, now);
    s_.load = load_.progress();
    if (load_.crossed_quarter() > 0 && s_.load) {
        const char* run = role_ == Role::incoming ? "incoming worker: " : "";
        host_.event(s_.port, "loading",
                    std::string(run) + "'" + s_.handle + "' " + describe(*s_.load));
    }
}

void Port::note_activity(Clock::time_point now) {
    if (s_.last_used == Clock::time_point{} || s_.stats.requests != last_requests_ ||
        s_.stats.busy()) {
        s_.last_used = now;
    }
    last_requests_ = s_.stats.requests;
}

void Port::on_link_closed(const WorkerLinkPeer* peer) {
    if (link_ != peer) return;
    link_ = nullptr;
    s_.linked = false;
}

void Port::check_heartbeat(Clock::time_point now) {
    const bool expects_heartbeats =
        link_ != nullptr && s_.pid > 0 &&
        (s_.state == PortState::loading || s_.state == PortState::ready ||
         s_.state == PortState::draining);
    const auto timeout = kHeartbeatInterval * host_.config().supervisor.health.missed_heartbeats;
    if (!expects_heartbeats || now - last_heartbeat_ < timeout ||
        hung_since_ != Clock::time_point{})
        return;
    kill_unwell(
        "hung: no heartbeat for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
            " s",
        now);
}

void Port::kill_unwell(const std::string& reason, Clock::time_point now) {
    hung_since_ = now;
    s_.unwell = true;
    kill_reason_ = reason;
    s_.last_failure = reason;
    host_.event(s_.port, "unwell",
                reason + "; sending SIGTERM to worker pid " + std::to_string(s_.pid));
    signal(SIGTERM);
    signal(SIGCONT);  // a stopped process acts on SIGTERM only once it runs
}

void Port::escalate_kill(Clock::time_point now) {
    const auto grace = host_.config().supervisor.health.kill_grace;
    if (hung_since_ == Clock::time_point{} || s_.pid <= 0 || now - hung_since_ <= grace) return;
    host_.event(s_.port, "kill",
                "worker pid " + std::to_string(s_.pid) + " still there " +
                    std::to_string(grace.count()) + " ms after SIGTERM; sending SIGKILL");
    signal(SIGKILL);
    hung_since_ = now;  // once per grace period at most
}

void Port::tick(Clock::time_point now, bool stalled) {
    if (stalled) last_heartbeat_ = now;
    if (!exited_) {  // reaped: nothing to find unwell or kill
        check_heartbeat(now);
        escalate_kill(now);
    }
    if (process_) {
        if (!exited_) {
            exited_ = process_->poll_exit();
            exited_at_ = now;
        }
        // Its last word (the final heartbeat, with how its engine ended) may still wait in the
        // link, read just before the link's end: explained once the link has closed, or soon.
        constexpr auto kLastWord = std::chrono::milliseconds(250);
        if (exited_ && (link_ == nullptr || now - exited_at_ >= kLastWord)) {
            const auto exit = *exited_;
            exited_.reset();
            // `ensemble logs` shows the serving worker's: a swap's incoming one has its files.
            const auto logs = role_ == Role::incoming
                                  ? s_.engine_log.string()
                                  : "'ensemble logs " + std::to_string(s_.port) + "'";
            auto how = explain_exit(exit, s_.port, s_.stats.engine_last_exit, logs);
            // A kill of ours has its reason; only one nobody here sent is put down to memory.
            if (exit.signaled && exit.signal == SIGKILL && kill_reason_.empty())
                how += host_.processes().explain_sigkill();
            on_gone(how);
        }
        return;
    }
    if (s_.pid == 0) return;
    // An adopted worker is not our child: watch it by its identity, not its pid alone.
    const auto check = host_.processes().check({static_cast<pid_t>(s_.pid), pid_start_time_});
    if (check.verdict == IdentityVerdict::gone || check.verdict == IdentityVerdict::reused) {
        on_gone("the adopted worker (pid " + std::to_string(s_.pid) + ") exited");
    } else if (check.verdict == IdentityVerdict::same && s_.state == PortState::starting &&
               link_ == nullptr && now > adopt_deadline_) {
        const auto why = "worker pid " + std::to_string(s_.pid) + " did not reconnect within " +
                         std::to_string(kAdoptGrace.count()) + " s";
        host_.event(s_.port, "adopt_failed", why + "; replacing it");
        kill_reason_ = why + ", killed";
        adopt_deadline_ = Clock::time_point::max();  // once
        signal(SIGKILL);
    }
}

bool Port::wants_probe() const {
    return s_.state == PortState::ready && !probe_in_flight_ && hung_since_ == Clock::time_point{};
}

void Port::on_probe(std::uint64_t attempt, bool ok, const std::string& what,
                    const std::string& own_trouble) {
    probe_in_flight_ = false;
    if (attempt_ != attempt || s_.state != PortState::ready || ok) {
        probe_misses_ = 0;
        return;
    }
    if (!own_trouble.empty()) {
        // Our own shortage (descriptors, memory) says nothing about the worker.
        spdlog::warn(
            "port {}: could not probe GET /health: {} (ensembled's own trouble; the worker is "
            "not blamed)",
            s_.port, own_trouble);
        return;
    }
    const auto& health = host_.config().supervisor.health;
    ++probe_misses_;
    spdlog::warn("port {}: GET /health failed ({}), {} of {} in a row", s_.port, what,
                 probe_misses_, health.probe_failures);
    if (probe_misses_ >= health.probe_failures && hung_since_ == Clock::time_point{}) {
        kill_unwell("unhealthy: GET /health on the public port failed " +
                        std::to_string(probe_misses_) + " times in a row (last: " + what + ")",
                    host_.time().now());
    }
}

}  // namespace ensemble
