#include "supervisor/fleet.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <fstream>

#include "os/http_probe.h"
#include "os/log_rotation.h"
#include "os/memory_kill_watch.h"
#include "os/process_identity.h"

namespace ensemble {

namespace {

constexpr auto kAdoptGrace = std::chrono::seconds(10);
// Workers reconnect every 0.5 s: one that lost its record (state.db gone) and holds a port
// this ensembled should serve has this long to say who it is before a new one is started.
constexpr auto kSurvivorGrace = std::chrono::seconds(2);
constexpr auto kHeartbeatInterval = std::chrono::seconds(1);  // the worker's (supervisor_link)

// Worker exit codes that mean something specific (see docs/WORKER.md).
// `engine_last_exit`: how the worker last said its engine ended (its final heartbeat).
std::string explain_exit(const ExitStatus& status, int port, const std::string& engine_last_exit) {
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
                   std::to_string(status.code) + "; see 'ensemble logs " + std::to_string(port) +
                   "')";
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

Fleet::Fleet(asio::io_context& io, Config config, std::unique_ptr<StateStore> store,
             WorkerSpawner spawner)
    : Fleet(io, std::move(config), std::move(store),
            System{std::make_unique<AsioScheduler>(io), std::make_unique<OsProcessOps>(io),
                   std::make_unique<WorkerSpawner>(std::move(spawner))}) {}

Fleet::Fleet(asio::io_context& io, Config config, std::unique_ptr<StateStore> store, System system)
    : io_(io),
      config_(std::move(config)),
      store_(std::move(store)),
      time_(std::move(system.time)),
      processes_(std::move(system.processes)),
      launcher_(std::move(system.launcher)),
      started_(time_->now()) {}

Fleet::~Fleet() = default;

PortRuntime& Fleet::runtime(int port) {
    auto& slot = ports_[port];
    if (!slot) {
        slot = std::make_unique<PortRuntime>();
        slot->port = port;
        next_attempt(*slot);  // not 0: no timer of an erased runtime of this port matches
        slot->policy = RestartPolicy(config_.supervisor.restart);
    }
    return *slot;
}

PortRuntime* Fleet::find(int port) {
    const auto it = ports_.find(port);
    return it == ports_.end() ? nullptr : it->second.get();
}

void Fleet::event(int port, const std::string& kind, const std::string& message) {
    spdlog::info("port {}: {}: {}", port, kind, message);
    if (auto ok = store_->append_event({0, 0, port, kind, message}); !ok) {
        spdlog::error("cannot write the event log: {}", ok.error().message);
    }
}

void Fleet::log_unsaved(const Status& saved, const std::string& what) {
    if (!saved)
        spdlog::error("{} was not saved in the state database: {}", what, saved.error().message);
}

bool Fleet::move(PortRuntime& rt, PortEvent ev, const std::string& reason) {
    const auto next = transition(rt.state, ev);
    if (!next) {
        spdlog::debug("port {}: ignored {} in state {}", rt.port, to_string(ev),
                      to_string(rt.state));
        return false;
    }
    if (*next != rt.state) {
        event(rt.port, "state",
              std::string(to_string(rt.state)) + " -> " + to_string(*next) + ": " + reason);
        // Since when this run has been serving: kept through an engine restart inside the
        // worker, cleared when a new worker starts (start_worker).
        if (*next == PortState::ready && !rt.ready_since) rt.ready_since = now();
        rt.state = *next;
        save_record(rt);
    }
    wake();
    return true;
}

void Fleet::wake() {
    time_->wake_sleepers();
}

void Fleet::save_record(const PortRuntime& rt) {
    if (rt.pid == 0) {
        log_unsaved(store_->remove_worker(rt.port),
                    "that port " + std::to_string(rt.port) + " has no worker now");
        return;
    }
    const WorkerRecord r{.port = rt.port,
                         .handle = rt.handle,
                         .worker_id = rt.worker_id,
                         .token = rt.token,
                         .pid = rt.pid,
                         .pid_start_time = rt.pid_start_time,
                         .engine_pid = rt.stats.engine_pid,
                         .engine_start_time = rt.stats.engine_start_time,
                         .engine_group = rt.stats.engine_group,
                         .state = to_string(rt.state),
                         .started_at_ms = rt.started_unix_ms,
                         .ready_at_ms = 0,
                         .restarts = rt.restarts,
                         .last_exit = rt.last_failure};
    log_unsaved(store_->save_worker(r), "port " + std::to_string(rt.port) + "'s worker record");
}

bool Fleet::signal_worker(const PortRuntime& rt, int signal) {
    if (rt.pid <= 1) return false;
    if (rt.process) {
        // Our own child: its pid cannot belong to anyone else before we reap it.
        processes_->signal_child(static_cast<pid_t>(rt.pid), signal);
        return true;
    }
    const auto report =
        processes_->signal_if_ours({static_cast<pid_t>(rt.pid), rt.pid_start_time}, signal,
                                   "the worker of port " + std::to_string(rt.port));
    if (report.outcome == KillOutcome::killed) return true;
    spdlog::warn("port {}: {}", rt.port, report.message);
    return false;
}

void Fleet::stop_engine_left_behind(int port, const EngineRecord& recorded,
                                    const std::string& boot) {
    const auto record_path = port_files_in(config_.supervisor.state_dir, port).engine_record;
    const auto what = "the engine left behind by port " + std::to_string(port) + "'s worker";
    for (const auto& done : processes_->stop_engine_left_behind(record_path, recorded, boot, what))
        event(port, "engine_left_behind", done);
}

const PortAssignment* Fleet::overrides_for(const PortRuntime& rt) const {
    const auto profile = config_.profiles.find(rt.profile);
    if (profile == config_.profiles.end()) return nullptr;
    const auto port = profile->second.ports.find(rt.port);
    return port == profile->second.ports.end() ? nullptr : &port->second;
}

void Fleet::note_adopted_command(PortRuntime& rt) {
    // What it was started with died with the earlier ensembled: what the config says now.
    auto plan = launcher_->plan(config_, rt.port, rt.handle, overrides_for(rt));
    rt.command = plan ? plan->command : WorkerCommand{};
}

void Fleet::refresh_estimate(PortRuntime& rt) {
    if (auto estimate = estimate_for(rt.port, rt.handle, rt.profile)) {
        rt.estimate = *estimate;
        rt.estimate_error.clear();
    } else {
        rt.estimate.reset();
        rt.estimate_error = estimate.error().message;
    }
}

Status Fleet::start_worker(PortRuntime& rt) {
    auto spawned = launcher_->spawn(config_, rt.port, rt.handle, overrides_for(rt));
    if (!spawned) {
        rt.last_failure = spawned.error().message;
        event(rt.port, "spawn_failed", spawned.error().message);
        return spawned.error();
    }
    rt.process = std::move(spawned->process);
    refresh_estimate(rt);
    rt.pid = rt.process->pid();
    const auto identity = processes_->identify(static_cast<pid_t>(rt.pid));
    rt.pid_start_time = identity ? identity->start_time : 0;
    rt.worker_id = spawned->launch.worker_id;
    rt.token = spawned->launch.token;
    rt.worker_log = spawned->launch.worker_log;
    rt.engine_log = spawned->launch.engine_log;
    rt.command = spawned->launch.command;
    rt.link = nullptr;
    rt.stats = {};
    rt.probe_misses = 0;
    rt.stop_requested = false;
    rt.ready_since.reset();  // a run that fails before it is ever ready was not healthy
    rt.started = now();
    rt.started_unix_ms = time_->unix_ms();
    next_attempt(rt);
    move(rt, PortEvent::spawn,
         "worker " + rt.worker_id + " (pid " + std::to_string(rt.pid) + ") serving '" + rt.handle +
             "'");
    return Ok{};
}

void Fleet::start_or_retry(PortRuntime& rt, std::chrono::seconds retry) {
    if (const auto holder = dismissed_holder(rt.port)) {
        // A worker told to stop still holds the port while it drains: starting now would only
        // fail (port in use, its engine record locked) and count against the port.
        const auto why = "worker pid " + std::to_string(*holder) +
                         ", told to stop, still holds the port; starting once it has gone";
        if (rt.last_failure != why) event(rt.port, "waiting", why);
        rt.last_failure = why;
        rt.state = PortState::backoff;  // escalate_dismissed starts it
        next_attempt(rt);               // and no earlier timer does
        return;
    }
    auto ok = start_worker(rt);
    if (ok) return;
    if (ok.error().code != "no_resources") {
        on_worker_gone(rt, ok.error().message);
        return;
    }
    // ensembled's own shortage (descriptors, memory, processes): not a failure of the port.
    // Retried at growing intervals, with one event per streak rather than one per try.
    constexpr auto kFirstRetry = std::chrono::seconds(1);
    constexpr auto kMaxRetry = std::chrono::seconds(30);
    rt.last_failure = ok.error().message + "; ensembled's own shortage, not the port's: retrying";
    if (retry == kFirstRetry) {
        event(rt.port, "spawn_deferred",
              ok.error().message + "; ensembled's own shortage, not the port's: retrying from " +
                  std::to_string(kFirstRetry.count()) + " s, up to every " +
                  std::to_string(kMaxRetry.count()) + " s");
    } else {
        spdlog::debug("port {}: {}; retrying in {} s", rt.port, ok.error().message, retry.count());
    }
    const int port = rt.port;
    const auto attempt = rt.attempt;
    const auto state = rt.state;
    const auto next = std::min(retry * 2, std::chrono::seconds(kMaxRetry));
    time_->after(retry, [this, port, attempt, state, next] {
        auto* r = find(port);
        if (shutting_down_ || r == nullptr || r->attempt != attempt || r->state != state ||
            r->stop_requested)
            return;
        start_or_retry(*r, next);
    });
}

void Fleet::stop_worker(PortRuntime& rt, const std::string& reason) {
    rt.stop_requested = true;
    if (!move(rt, PortEvent::stop, reason)) return;
    if (rt.state == PortState::stopped) return;  // was in backoff or failed: nothing runs
    if (rt.link != nullptr) {
        rt.link->send(protocol::stop_message());
    } else {
        signal_worker(rt, SIGTERM);
    }
    // A worker that ignores the stop is killed.
    const auto stop_timeout = config_.supervisor.health.stop_timeout;
    const int port = rt.port;
    const auto attempt = rt.attempt;
    time_->after(stop_timeout, [this, port, attempt, stop_timeout] {
        auto* r = find(port);
        if (r == nullptr || r->attempt != attempt || r->state != PortState::stopping || r->pid == 0)
            return;
        const auto why =
            "the worker did not stop within " + std::to_string(stop_timeout.count()) + " ms";
        event(port, "kill", why);
        r->kill_reason = why + ", killed";
        signal_worker(*r, SIGKILL);
    });
}

void Fleet::on_worker_gone(PortRuntime& rt, const std::string& how) {
    if (rt.link != nullptr) rt.link->close();
    rt.link = nullptr;
    rt.process.reset();
    rt.pid = 0;
    // Nothing kills an engine whose worker died (macOS has no PR_SET_PDEATHSIG): we do.
    stop_engine_left_behind(
        rt.port, {rt.stats.engine_pid, rt.stats.engine_start_time, rt.stats.engine_group},
        processes_->boot_id());
    rt.stats.engine_pid = 0;
    rt.stats.engine_start_time = 0;
    rt.stats.engine_group = 0;
    if (rt.stop_requested || rt.state == PortState::stopping) {
        move(rt, PortEvent::exited, "worker exited (" + how + ")");
        save_record(rt);
        return;
    }
    rt.last_failure = rt.kill_reason.empty() ? how : rt.kill_reason + ", then " + how;
    rt.hung_since = {};
    rt.kill_reason.clear();
    rt.last_log_lines = tail_lines(rt.engine_log, 50);
    const auto worker_lines = tail_lines(rt.worker_log, 10);
    rt.last_log_lines.insert(rt.last_log_lines.end(), worker_lines.begin(), worker_lines.end());
    const auto delay = rt.policy.on_failure(now(), rt.ready_since);
    if (!delay) {
        move(rt, PortEvent::crash_loop,
             "crash loop: " + how + "; stays down until 'ensemble restart " +
                 std::to_string(rt.port) + "'");
        save_record(rt);
        return;
    }
    ++rt.restarts;
    move(rt, PortEvent::failed, how + "; restarting in " + std::to_string(delay->count()) + " ms");
    save_record(rt);
    schedule_restart(rt, *delay);
}

void Fleet::schedule_restart(PortRuntime& rt, std::chrono::milliseconds delay) {
    const int port = rt.port;
    const auto attempt = rt.attempt;
    time_->after(delay, [this, port, attempt] {
        auto* r = find(port);
        if (shutting_down_ || r == nullptr || r->attempt != attempt ||
            r->state != PortState::backoff)
            return;
        start_or_retry(*r);
    });
}

void Fleet::check_heartbeat(PortRuntime& rt, Clock::time_point now) {
    const bool expects_heartbeats =
        rt.link != nullptr && rt.pid > 0 &&
        (rt.state == PortState::loading || rt.state == PortState::ready ||
         rt.state == PortState::draining);
    const auto timeout = kHeartbeatInterval * config_.supervisor.health.missed_heartbeats;
    if (!expects_heartbeats || now - rt.last_heartbeat < timeout ||
        rt.hung_since != Clock::time_point{})
        return;
    kill_unwell(
        rt,
        "hung: no heartbeat for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
            " s",
        now);
}

void Fleet::kill_unwell(PortRuntime& rt, const std::string& reason, Clock::time_point now) {
    const auto pid = static_cast<pid_t>(rt.pid);
    rt.hung_since = now;
    rt.kill_reason = reason;
    rt.last_failure = reason;
    event(rt.port, "unwell", reason + "; sending SIGTERM to worker pid " + std::to_string(pid));
    signal_worker(rt, SIGTERM);
    signal_worker(rt, SIGCONT);  // a stopped process acts on SIGTERM only once it runs
}

void Fleet::escalate_kill(PortRuntime& rt, Clock::time_point now) {
    if (rt.hung_since == Clock::time_point{} || rt.pid <= 0 ||
        now - rt.hung_since <= config_.supervisor.health.kill_grace)
        return;
    event(rt.port, "kill",
          "worker pid " + std::to_string(rt.pid) + " still there " +
              std::to_string(config_.supervisor.health.kill_grace.count()) +
              " ms after SIGTERM; sending SIGKILL");
    signal_worker(rt, SIGKILL);
    rt.hung_since = now;  // once per grace period at most
}

void Fleet::probe_ports(Clock::time_point now) {
    const auto& health = config_.supervisor.health;
    if (health.probe_interval.count() <= 0 || now - last_probe_ < health.probe_interval) return;
    last_probe_ = now;
    for (auto& [port, rt] : ports_) {
        if (rt->state != PortState::ready || rt->probe_in_flight ||
            rt->hung_since != Clock::time_point{})
            continue;
        rt->probe_in_flight = true;
        asio::co_spawn(io_, probe_port(port, rt->attempt), asio::detached);
    }
}

awaitable<void> Fleet::probe_port(int port, std::uint64_t attempt) {
    const auto& health = config_.supervisor.health;
    boost::system::error_code ec;
    auto host = asio::ip::make_address(config_.supervisor.bind_host, ec);
    if (ec || host.is_unspecified())  // a wildcard bind answers on loopback
        host = host.is_v6() ? asio::ip::address(asio::ip::address_v6::loopback())
                            : asio::ip::address(asio::ip::address_v4::loopback());
    const HttpProbe probe{"GET", "/health", ""};
    const auto endpoint = StreamEndpoint::tcp(host, static_cast<unsigned short>(port));
    const auto result = co_await http_probe(endpoint, probe, health.probe_timeout);
    const int status = result.status;
    auto* rt = find(port);
    if (rt == nullptr) co_return;
    rt->probe_in_flight = false;
    if (rt->attempt != attempt || rt->state != PortState::ready) {
        rt->probe_misses = 0;
        co_return;
    }
    if (result.ok()) {
        rt->probe_misses = 0;
        co_return;
    }
    if (!result.own_trouble.empty()) {
        // Our own shortage (descriptors, memory) says nothing about the worker.
        spdlog::warn(
            "port {}: could not probe GET /health: {} (ensembled's own trouble; the "
            "worker is not blamed)",
            port, result.own_trouble);
        co_return;
    }
    ++rt->probe_misses;
    const std::string what =
        status == 0 ? "no answer within " + std::to_string(health.probe_timeout.count()) + " ms"
                    : "HTTP " + std::to_string(status);
    spdlog::warn("port {}: GET /health failed ({}), {} of {} in a row", port, what,
                 rt->probe_misses, health.probe_failures);
    if (rt->probe_misses >= health.probe_failures && rt->hung_since == Clock::time_point{}) {
        kill_unwell(*rt,
                    "unhealthy: GET /health on the public port failed " +
                        std::to_string(rt->probe_misses) + " times in a row (last: " + what + ")",
                    now());
    }
}

void Fleet::rotate_logs(Clock::time_point now) {
    if (now - last_rotation_ < std::chrono::seconds(10)) return;
    last_rotation_ = now;
    const auto& logs = config_.supervisor.logs;
    for (const auto& [port, rt] : ports_) {
        for (const auto* path : {&rt->worker_log, &rt->engine_log}) {
            if (path->empty()) continue;
            auto rotated = rotate_if_larger(*path, logs.max_bytes, logs.keep);
            if (!rotated) spdlog::warn("port {}: {}", port, rotated.error().message);
        }
    }
}

std::string Fleet::summary() const {
    std::map<std::string, int> by_state;
    for (const auto& [port, rt] : ports_) {
        if (rt->state != PortState::stopped) ++by_state[to_string(rt->state)];
    }
    int total = 0;
    std::string parts;
    for (const auto& [state, n] : by_state) {
        total += n;
        parts += (parts.empty() ? ": " : ", ") + std::to_string(n) + " " + state;
    }
    return std::to_string(total) + (total == 1 ? " port" : " ports") + parts;
}

void Fleet::tick() {
    const auto now = this->now();
    rotate_logs(now);
    // If this loop itself stalled (machine suspended, debugger), heartbeats wait unread in the
    // sockets: give every worker a fresh interval rather than declare them all hung.
    const bool stalled =
        last_tick_ != Clock::time_point{} && now - last_tick_ > std::chrono::seconds(2);
    last_tick_ = now;
    probe_ports(now);
    check_budget(now);
    escalate_dismissed(now);
    for (auto& [port, rt] : ports_) {
        if (stalled) rt->last_heartbeat = now;
        check_heartbeat(*rt, now);
        escalate_kill(*rt, now);
        if (rt->process) {
            if (auto exit = rt->process->poll_exit()) {
                auto how = explain_exit(*exit, port, rt->stats.engine_last_exit);
                // A kill of ours has its reason; only one nobody here sent is put down to memory.
                if (exit->signaled && exit->signal == SIGKILL && rt->kill_reason.empty())
                    how += processes_->explain_sigkill();
                on_worker_gone(*rt, how);
            }
            continue;
        }
        if (rt->pid == 0) continue;
        // An adopted worker is not our child: watch it by its identity, not its pid alone.
        const auto check = processes_->check({static_cast<pid_t>(rt->pid), rt->pid_start_time});
        if (check.verdict == IdentityVerdict::gone || check.verdict == IdentityVerdict::reused) {
            on_worker_gone(*rt, "the adopted worker (pid " + std::to_string(rt->pid) + ") exited");
        } else if (check.verdict == IdentityVerdict::same && rt->state == PortState::starting &&
                   rt->link == nullptr && now > rt->adopt_deadline) {
            const auto why = "worker pid " + std::to_string(rt->pid) +
                             " did not reconnect within " + std::to_string(kAdoptGrace.count()) +
                             " s";
            event(port, "adopt_failed", why + "; replacing it");
            rt->kill_reason = why + ", killed";
            rt->adopt_deadline = Clock::time_point::max();  // once
            signal_worker(*rt, SIGKILL);
        }
    }
}

void Fleet::reconcile() {
    auto desired = store_->assignments();
    auto records = store_->workers();
    if (!desired || !records) {
        spdlog::error("cannot read the state database: {}",
                      (!desired ? desired.error() : records.error()).message);
        return;
    }
    const auto initialized = store_->meta("initialized");
    if (desired->empty() && initialized && initialized->empty() &&
        !config_.supervisor.boot_profile.empty()) {
        const auto& profile = config_.profiles.at(config_.supervisor.boot_profile);
        if (auto refusal = boot_refusal(profile)) {
            event(0, "budget_refused",
                  "boot profile '" + profile.name + "' not loaded: " + *refusal);
            return;
        }
        event(0, "boot", "no assignments yet: loading boot profile '" + profile.name + "'");
        std::vector<Assignment> boot;
        for (const auto& [port, a] : profile.ports)
            boot.push_back({port, a.model, profile.name, 0});
        log_unsaved(store_->replace_assignments(boot),
                    "boot profile '" + profile.name + "''s assignments");
        log_unsaved(store_->set_meta("active_profile", profile.name), "the active profile");
        desired = store_->assignments();
    }
    log_unsaved(store_->set_meta("initialized", "1"), "that this state database is in use");
    // Process identities are worth something only in the boot they were recorded in.
    const auto this_boot = processes_->boot_id();
    const auto recorded_boot = store_->meta("boot_id");
    const std::string records_boot = recorded_boot ? *recorded_boot : "";
    const bool records_this_boot = records_boot.empty() || records_boot == this_boot;
    if (!records_this_boot)
        event(0, "reboot", "the machine rebooted since the last run: no earlier process survives");
    log_unsaved(store_->set_meta("boot_id", this_boot), "this boot's id");
    std::map<int, Assignment> wanted;
    for (const auto& a : *desired)
        wanted[a.port] = a;
    for (const auto& r : *records) {
        const auto check = processes_->check({static_cast<pid_t>(r.pid), r.pid_start_time});
        const bool alive = records_this_boot && check.verdict == IdentityVerdict::same;
        if (records_this_boot && check.verdict == IdentityVerdict::unknown) {
            // Neither adopted nor replaced (two workers on one port), nor its engine touched.
            auto& rt = runtime(r.port);
            rt.handle = r.handle;
            rt.state = PortState::failed;
            rt.last_failure = "cannot tell whether worker pid " + std::to_string(r.pid) +
                              " from before still runs (" + check.message +
                              "): not started. If it does not run (ps -p " + std::to_string(r.pid) +
                              "), 'ensemble restart " + std::to_string(r.port) +
                              "' starts a new one";
            event(r.port, "worker_unknown", rt.last_failure);
            continue;
        }
        const auto want = wanted.find(r.port);
        if (alive && want != wanted.end() && want->second.handle == r.handle) {
            auto& rt = runtime(r.port);
            rt.handle = r.handle;
            rt.profile = want->second.profile;
            rt.pid = r.pid;
            rt.pid_start_time = r.pid_start_time;
            rt.worker_id = r.worker_id;
            rt.token = r.token;
            rt.restarts = r.restarts;
            rt.stats.engine_pid = r.engine_pid;
            rt.stats.engine_start_time = r.engine_start_time;
            rt.stats.engine_group = r.engine_group;
            rt.state = PortState::starting;
            rt.adopt_deadline = now() + kAdoptGrace;
            const auto files = port_files_in(config_.supervisor.state_dir, r.port);
            rt.worker_log = files.worker_log;
            rt.engine_log = files.engine_log;
            note_adopted_command(rt);
            refresh_estimate(rt);  // an adopted port holds its share of the budget too
            event(r.port, "adopting",
                  "worker pid " + std::to_string(r.pid) + " survived; waiting for it to reconnect");
            continue;
        }
        if (alive) {
            event(r.port, "stale_worker",
                  "stopping worker pid " + std::to_string(r.pid) + " that should not run");
            // It stops its engine itself; if it reconnects while it drains, it is not adopted.
            processes_->signal_if_ours({static_cast<pid_t>(r.pid), r.pid_start_time}, SIGTERM,
                                       "the worker of port " + std::to_string(r.port));
            dismiss(r.port, {static_cast<pid_t>(r.pid), r.pid_start_time},
                    "the worker that should not run");
        } else if (records_this_boot) {
            // Killed with everything else (kill -9, a crash): its engine may still run.
            stop_engine_left_behind(r.port, {r.engine_pid, r.engine_start_time, r.engine_group},
                                    this_boot);
        }
        log_unsaved(store_->remove_worker(r.port),
                    "that port " + std::to_string(r.port) + " has no worker now");
    }
    for (const auto& [port, a] : wanted) {
        if (find(port) != nullptr) continue;
        auto& rt = runtime(port);
        rt.handle = a.handle;
        rt.profile = a.profile;
        const bool held_by_dismissed = dismissed_holder(port).has_value();  // waits in start
        if (auto free = check_port_free(port);
            !held_by_dismissed && !free && free.error().code == "port_busy") {
            // Perhaps a worker of ours whose record was lost: it is adopted when it reconnects.
            rt.state = PortState::backoff;
            event(port, "port_taken",
                  "port " + std::to_string(port) +
                      " is taken, though no worker of this ensembled is recorded on it; "
                      "waiting " +
                      std::to_string(kSurvivorGrace.count()) +
                      " s for a worker of an earlier run to reconnect before starting one");
            schedule_restart(rt, kSurvivorGrace);
            continue;
        }
        start_or_retry(rt);
    }
}

Status Fleet::on_register(WorkerLinkPeer* peer, const protocol::Register& m) {
    auto* rt = find(m.port);
    const bool expected =
        rt != nullptr && rt->worker_id == m.worker_id && !rt->token.empty() && rt->token == m.token;
    if (!expected) {
        // Adoption or termination, never limbo: a worker this ensembled has no record of is
        // adopted when it serves what its port should, and otherwise stops on this refusal
        // instead of serving on unmanaged.
        auto adopted = adopt_unrecorded(peer, m);
        if (!adopted) {
            const auto who = "worker " + m.worker_id + " (pid " + std::to_string(m.pid) +
                             ") on port " + std::to_string(m.port);
            event(m.port, "worker_refused",
                  who + " is not one this ensembled expects and cannot be adopted: " +
                      adopted.error().message + "; told to stop");
            if (const auto identity = peer->identity()) dismiss(m.port, *identity, who);
            return Error{"unknown_worker", "ensembled cannot adopt " + who + ": " +
                                               adopted.error().message + "; stop serving"};
        }
        rt = find(m.port);
    }
    if (rt->link != nullptr && rt->link != peer) rt->link->close();
    rt->link = peer;
    rt->last_heartbeat = now();
    if (rt->state == PortState::starting) {
        const bool adopted = rt->process == nullptr;
        move(*rt, PortEvent::registered,
             adopted ? "re-adopted after a supervisor restart" : "worker registered");
    }
    if (rt->state == PortState::stopping) peer->send(protocol::stop_message());
    return Ok{};
}

Status Fleet::adopt_unrecorded(WorkerLinkPeer* peer, const protocol::Register& m) {
    if (shutting_down_) return Error{"shutting_down", "ensembled is shutting down"};
    if (m.handle.empty()) return Error{"unknown_worker", "it does not say which model it serves"};
    if (config_.find_model(m.handle) == nullptr) {
        return Error{"unknown_worker",
                     "it serves '" + m.handle + "', which the config does not define"};
    }
    // Only the process on the other end of the socket, as the kernel named it when it
    // connected, is adopted, and only while that same process still runs.
    const auto peer_identity = peer->identity();
    const pid_t pid = peer_identity ? peer_identity->pid : 0;
    if (pid <= 1 || pid != m.pid) {
        return Error{"unknown_worker", "its pid cannot be confirmed (it says " +
                                           std::to_string(m.pid) + ", the socket's peer is " +
                                           std::to_string(pid) + ")"};
    }
    const auto identity = processes_->identify(pid);
    if (!identity || *identity != *peer_identity)
        return Error{"unknown_worker", "the process that connected is gone"};
    for (const auto& d : dismissed_) {
        if (d.identity == *identity) return Error{"unknown_worker", "it was told to stop"};
    }
    const auto port = std::to_string(m.port);
    // It must hold the port it names (a worker binds its port before it registers).
    if (auto free = check_port_free(m.port); free || free.error().code != "port_busy")
        return Error{"unknown_worker", "port " + port + " is not taken: it does not serve there"};
    auto* rt = find(m.port);
    if (rt != nullptr) {
        if (rt->handle != m.handle) {
            return Error{"unknown_worker", "port " + port + " should serve '" + rt->handle +
                                               "', not '" + m.handle + "'"};
        }
        // Ours or one we wait for (its record says so) holds the port, it is being stopped,
        // or it is `failed` (crash loop, or a survivor whose identity could not be read).
        if (rt->pid != 0 || rt->link != nullptr || rt->state != PortState::backoff) {
            return Error{
                "unknown_worker",
                "port " + port + " is " + to_string(rt->state) +
                    (rt->pid != 0 ? " with worker pid " + std::to_string(rt->pid) : std::string())};
        }
    } else {
        // Nothing is assigned to the port: the assignment is rebuilt from the worker, as if
        // loaded by hand (its profile is not known) — a survivor reconnects within a second of
        // a start, so only then, and never on a port the operator has unassigned since.
        if (now() - started_ > kAdoptGrace)
            return Error{"unknown_worker", "no worker is expected there"};
        if (unassigned_.contains(m.port))
            return Error{"unknown_worker", "port " + port + " was unloaded"};
        if (auto allowed = check_port_allowed(config_.supervisor, m.port); !allowed)
            return allowed.error();
        if (auto ok = store_->set_assignment({m.port, m.handle, "", 0}); !ok) return ok.error();
        rt = &runtime(m.port);
        rt->handle = m.handle;
    }
    next_attempt(*rt);  // no timer of an earlier attempt acts on the port now
    rt->pid = pid;
    rt->pid_start_time = identity->start_time;
    rt->worker_id = m.worker_id;
    rt->token = m.token;
    rt->stats = {};
    rt->probe_misses = 0;
    rt->stop_requested = false;
    rt->ready_since.reset();
    rt->started = now();
    rt->started_unix_ms = time_->unix_ms();
    rt->adopt_deadline = now() + kAdoptGrace;
    const auto files = port_files_in(config_.supervisor.state_dir, m.port);
    rt->worker_log = files.worker_log;
    rt->engine_log = files.engine_log;
    rt->state = PortState::starting;  // registered at once by on_register
    note_adopted_command(*rt);
    refresh_estimate(*rt);
    event(m.port, "adopted",
          "worker pid " + std::to_string(pid) + " serving '" + m.handle +
              "' had no record here (state.db lost?); adopted from what it says, and its "
              "records rebuilt");
    return Ok{};
}

void Fleet::dismiss(int port, const ProcessIdentity& identity, const std::string& who) {
    for (const auto& d : dismissed_) {
        if (d.identity == identity) return;  // already told
    }
    dismissed_.push_back({port, identity, now() + config_.supervisor.health.stop_timeout, false});
    spdlog::debug("port {}: {} told to stop", port, who);
}

std::optional<pid_t> Fleet::dismissed_holder(int port) const {
    for (const auto& d : dismissed_) {
        if (d.port == port) return d.identity.pid;
    }
    return std::nullopt;
}

void Fleet::escalate_dismissed(Clock::time_point now) {
    std::vector<int> freed;
    std::erase_if(dismissed_, [&](Dismissed& d) {
        const auto check = processes_->check(d.identity);
        if (check.verdict == IdentityVerdict::gone || check.verdict == IdentityVerdict::reused) {
            // Its engine may be left: unless a worker of ours on the port handles its record.
            const auto* rt = find(d.port);
            if (rt == nullptr || rt->pid == 0)
                stop_engine_left_behind(d.port, {}, processes_->boot_id());
            freed.push_back(d.port);
            return true;
        }
        if (now < d.deadline || d.killed) return false;
        d.killed = true;  // once; it stays listed until it is gone
        const auto report = processes_->signal_if_ours(
            d.identity, SIGKILL,
            "worker pid " + std::to_string(d.identity.pid) + " on port " + std::to_string(d.port));
        event(d.port, "kill",
              "a worker told to stop did not stop within " +
                  std::to_string(config_.supervisor.health.stop_timeout.count()) +
                  " ms: " + report.message);
        return false;
    });
    // What waited for the port starts now (start_or_retry), not counted as a failure.
    for (const int port : freed) {
        auto* rt = find(port);
        if (rt != nullptr && rt->state == PortState::backoff && rt->pid == 0 &&
            !rt->stop_requested && !shutting_down_ && !dismissed_holder(port))
            start_or_retry(*rt);
    }
}

void Fleet::on_heartbeat(WorkerLinkPeer* peer, const protocol::WorkerStats& stats) {
    for (auto& [port, rt] : ports_) {
        if (rt->link != peer) continue;
        const auto now = this->now();
        rt->last_heartbeat = now;
        if (stats.tokens < rt->rate_tokens || rt->rate_since == Clock::time_point{}) {
            rt->rate_tokens = stats.tokens;  // a new worker: start counting afresh
            rt->rate_since = now;
        } else if (now - rt->rate_since >= std::chrono::seconds(1)) {
            const double seconds = std::chrono::duration<double>(now - rt->rate_since).count();
            rt->tokens_per_s = static_cast<double>(stats.tokens - rt->rate_tokens) / seconds;
            rt->rate_tokens = stats.tokens;
            rt->rate_since = now;
        }
        const bool engine_changed = stats.engine_pid != rt->stats.engine_pid ||
                                    stats.engine_start_time != rt->stats.engine_start_time;
        rt->stats = stats;
        if (engine_changed) save_record(*rt);  // the engine to kill should this worker die
        note_activity(*rt, now);
        if (stats.state == "ready") {
            move(*rt, PortEvent::engine_ready, "the engine is ready");
        } else if (stats.state == "loading" || stats.state == "restarting") {
            if (rt->state == PortState::ready) {
                const auto why =
                    stats.engine_last_exit.empty() ? "" : " (" + stats.engine_last_exit + ")";
                move(*rt, PortEvent::engine_loading, "the engine is " + stats.state + why);
            }
        }
        return;
    }
}

void Fleet::on_link_closed(WorkerLinkPeer* peer) {
    for (auto& [port, rt] : ports_) {
        if (rt->link == peer) rt->link = nullptr;
    }
    tick();  // the worker may have exited; if not, it reconnects
}

awaitable<bool> Fleet::wait_for(int port, const std::function<bool(const PortRuntime&)>& done,
                                Clock::time_point deadline) {
    for (;;) {
        const auto* rt = find(port);
        if (rt != nullptr && done(*rt)) co_return true;
        if (now() >= deadline) co_return false;
        const auto until = std::min(deadline, now() + std::chrono::milliseconds(500));
        co_await time_->sleep_until(until);
        tick();
    }
}

awaitable<bool> Fleet::wait_settled(int port, Clock::time_point deadline) {
    // Named, not a temporary inside the co_await expression (GCC 12 may destroy those twice).
    const std::function<bool(const PortRuntime&)> settled_state = [](const PortRuntime& rt) {
        return rt.state == PortState::ready || rt.state == PortState::backoff ||
               rt.state == PortState::failed || rt.state == PortState::stopped;
    };
    const bool settled = co_await wait_for(port, settled_state, deadline);
    const auto* rt = find(port);
    co_return settled&& rt != nullptr && rt->state == PortState::ready;
}

awaitable<bool> Fleet::wait_stopped(int port, Clock::time_point deadline) {
    const std::function<bool(const PortRuntime&)> not_running = [](const PortRuntime& rt) {
        return !is_running(rt.state);
    };
    const bool stopped = co_await wait_for(port, not_running, deadline);
    co_return stopped;
}

awaitable<void> Fleet::stop_all(std::chrono::milliseconds timeout) {
    shutting_down_ = true;  // no restart or retry timer starts a worker from here on
    for (auto& [port, rt] : ports_) {
        if (is_running(rt->state)) stop_worker(*rt, "the supervisor is stopping");
    }
    const auto deadline = now() + timeout;
    for (auto& [port, rt] : ports_) {
        const int p = port;
        co_await wait_stopped(p, deadline);
    }
}

}  // namespace ensemble
