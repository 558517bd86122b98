#include "supervisor/fleet.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <string_view>

#include "os/http_probe.h"
#include "os/log_rotation.h"

namespace ensemble {

namespace {

// A survivor of an earlier supervisor reconnects within a second of a start; a worker with no
// record is adopted into a port nothing is assigned to only this soon after the start.
constexpr auto kAdoptGrace = std::chrono::seconds(10);
// Workers reconnect every 0.5 s: one that lost its record (state.db gone) and holds a port
// this ensembled should serve has this long to say who it is before a new one is started.
constexpr auto kSurvivorGrace = std::chrono::seconds(2);
// A worker killed at the end of ensembled's stop is reaped (and its engine's group ended)
// within this.
constexpr auto kKilledWorkerReaped = std::chrono::seconds(5);

}  // namespace

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

Port& Fleet::port_at(int number) {
    auto& slot = ports_[number];
    PortHost& host = *this;
    if (!slot) {
        // A worker a swap replaced may still drain on one of the port's sets of files.
        int files = 0;
        for (const auto& run : side_runs_) {
            if (run->number() == number && run->snapshot().files == files) files = 1 - files;
        }
        slot = std::make_unique<Port>(host, number, files);
    }
    return *slot;
}

Port* Fleet::find(int port) {
    const auto it = ports_.find(port);
    return it == ports_.end() ? nullptr : it->second.get();
}

const Port* Fleet::find(int port) const {
    const auto it = ports_.find(port);
    return it == ports_.end() ? nullptr : it->second.get();
}

void Fleet::for_each_run(const std::function<void(Port&)>& visit) {
    for (auto& [number, port] : ports_)
        visit(*port);
    for (auto& run : side_runs_)
        visit(*run);
}

Port* Fleet::find_run(int port, std::uint64_t attempt) {
    Port* found = nullptr;
    for_each_run([&](Port& run) {
        if (run.number() == port && run.attempt() == attempt) found = &run;
    });
    return found;
}

Port* Fleet::expecting(const protocol::Register& m) {
    Port* found = nullptr;
    for_each_run([&](Port& run) {
        if (run.number() == m.port && run.expects(m)) found = &run;
    });
    return found;
}

bool Fleet::has_side_run(int port) const {
    return std::any_of(side_runs_.begin(), side_runs_.end(),
                       [port](const auto& run) { return run->number() == port; });
}

namespace {

// Events that tell of trouble go to the journal as warnings (`journalctl -p warning`); the
// rest of the fleet's life is info.
bool reports_trouble(std::string_view kind, std::string_view message) {
    static constexpr std::array<std::string_view, 16> kTrouble = {
        "adopt_failed",  "budget_refused", "command_failed", "engine_left_behind",
        "kill",          "listen_failed",  "over_budget",    "port_taken",
        "spawn_failed",  "stale_worker",   "swap_failed",    "swap_rollback",
        "unload_failed", "unwell",         "worker_refused", "worker_unknown"};
    if (kind == "state")  // "ready -> backoff: worker exited (signal 9)"
        return message.find(" -> backoff") != std::string_view::npos ||
               message.find(" -> failed") != std::string_view::npos;
    return std::find(kTrouble.begin(), kTrouble.end(), kind) != kTrouble.end();
}

}  // namespace

void Fleet::event(int port, const std::string& kind, const std::string& message) {
    const auto level = reports_trouble(kind, message) ? spdlog::level::warn : spdlog::level::info;
    if (port == 0) {  // the fleet's own (boot, reboot)
        spdlog::log(level, "{}: {}", kind, message);
    } else {
        spdlog::log(level, "port {}: {}: {}", port, kind, message);
    }
    if (auto ok = store_->append_event({0, 0, port, kind, message}); !ok) {
        spdlog::error("cannot write the event log: {}", ok.error().message);
    }
}

void Fleet::log_unsaved(const Status& saved, const std::string& what) {
    if (!saved)
        spdlog::error("{} was not saved in the state database: {}", what, saved.error().message);
}

void Fleet::wake() {
    time_->wake_sleepers();
    if (on_change) on_change();
}

void Fleet::probe_ports(Clock::time_point now) {
    const auto& health = config_.supervisor.health;
    if (health.probe_interval.count() <= 0 || now - last_probe_ < health.probe_interval) return;
    last_probe_ = now;
    for (auto& [number, port] : ports_) {
        if (!port->wants_probe()) continue;
        port->probe_started();
        asio::co_spawn(io_, probe_port(number, port->attempt()), asio::detached);
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
    auto* p = find(port);
    if (p == nullptr) co_return;
    const std::string what =
        status == 0 ? "no answer within " + std::to_string(health.probe_timeout.count()) + " ms"
                    : "HTTP " + std::to_string(status);
    p->on_probe(attempt, result.ok(), what, result.own_trouble);
}

void Fleet::rotate_logs(Clock::time_point now) {
    if (now - last_rotation_ < std::chrono::seconds(10)) return;
    last_rotation_ = now;
    const auto& logs = config_.supervisor.logs;
    for (const auto& [port, p] : ports_) {
        for (const auto* path : {&p->snapshot().worker_log, &p->snapshot().engine_log}) {
            if (path->empty()) continue;
            auto rotated = rotate_if_larger(*path, logs.max_bytes, logs.keep);
            if (!rotated) spdlog::warn("port {}: {}", port, rotated.error().message);
        }
    }
}

std::string Fleet::summary() const {
    // Enough to tell the ports apart in `systemctl status`, bounded for a large fleet.
    constexpr int kPortsNamed = 8;
    std::map<std::string, int> by_state;
    std::string named;
    int total = 0;
    for (const auto& [number, port] : ports_) {
        const auto& s = port->snapshot();
        if (s.state == PortState::stopped) continue;
        ++by_state[to_string(s.state)];
        if (++total > kPortsNamed) continue;
        named += (named.empty() ? "" : ", ") + std::to_string(number) + " " + s.handle + " " +
                 to_string(s.state);
    }
    std::string counts;
    for (const auto& [state, n] : by_state) {
        counts += (counts.empty() ? "" : ", ") + std::to_string(n) + " " + state;
    }
    std::string line = std::to_string(total) + (total == 1 ? " port" : " ports");
    if (total == 0) return line;
    line += " (" + counts + "): " + named;
    if (total > kPortsNamed) line += ", +" + std::to_string(total - kPortsNamed) + " more";
    return line;
}

namespace {

// Where a client on this machine reaches a port bound to `bind_host`.
std::string local_url(const std::string& bind_host, int port) {
    std::string host = bind_host;
    if (host.empty() || host == "0.0.0.0") {
        host = "127.0.0.1";  // every interface: loopback is one of them
    } else if (host == "::") {
        host = "[::1]";
    } else if (host.find(':') != std::string::npos) {
        host = "[" + host + "]";
    }
    return "http://" + host + ":" + std::to_string(port) + "/v1";
}

// An upstream port that serves, or is on its way back to serving: by itself (a restart after a
// crash, a re-adoption), or as the operator restarts it (a stop that hands the port over to
// the next worker; should that serve another model, its handle says so then).
bool coming_or_serving(const Port& port) {
    const auto& s = port.snapshot();
    if (s.state == PortState::waiting) return false;  // itself in front of something not there
    if (port.hands_over()) return true;  // also once stopped, until the next worker starts
    return !s.stop_requested && (is_running(s.state) || s.state == PortState::backoff);
}

// "loading", "in backoff", "failed (crash loop: ...)", for "... on port 8100 is <this>".
std::string state_phrase(const PortSnapshot& s) {
    if (s.state == PortState::backoff) return "in backoff";
    if ((s.state == PortState::failed || s.state == PortState::waiting) && !s.last_failure.empty())
        return std::string(to_string(s.state)) + " (" + s.last_failure + ")";
    return to_string(s.state);
}

}  // namespace

bool Fleet::leads_to(const Port& start, int port) const {
    const Port* at = &start;
    for (std::size_t hops = 0; at != nullptr && hops <= ports_.size(); ++hops) {
        const auto& upstream = at->snapshot().upstream;
        if (!upstream) return false;
        if (upstream->port == port) return true;
        at = find(upstream->port);
    }
    return false;
}

Fleet::UpstreamSearch Fleet::find_upstream(const std::string& upstream, const std::string& profile,
                                           Upstream which, int except) const {
    UpstreamSearch search;
    const auto usable = [&](const Port& p) {
        const auto& s = p.snapshot();
        if (s.handle != upstream || s.port == except) return false;
        const bool serves = which == Upstream::ready
                                ? s.state == PortState::ready && !s.stop_requested
                                : coming_or_serving(p);
        // A proxy whose own chain runs in front of `except` would close a loop (a reload can
        // reverse a chain while its workers run).
        if (serves && except != 0 && leads_to(p, except)) {
            if (search.loops == nullptr) search.loops = &p;
            return false;
        }
        return serves;
    };
    // The port the dependent's own profile puts its upstream on first (a profile load does not
    // chain a proxy to a port it is about to replace), then the lowest.
    if (const auto it = config_.profiles.find(profile); it != config_.profiles.end()) {
        for (const auto& [number, a] : it->second.ports) {
            const auto* p = find(number);
            if (a.model == upstream && p != nullptr && usable(*p)) {
                search.found = p;
                return search;
            }
        }
    }
    for (const auto& [number, p] : ports_) {
        if (usable(*p)) {
            search.found = p.get();
            return search;
        }
        if (search.seen == nullptr && p->snapshot().handle == upstream && number != except)
            search.seen = p.get();
    }
    return search;
}

std::string Fleet::upstream_reason(const std::string& upstream, const UpstreamSearch& search) {
    if (search.loops != nullptr) {
        return "its upstream '" + upstream + "' on port " + std::to_string(search.loops->number()) +
               " runs in front of this port (a loop, after a reload reversed the chain); it waits "
               "until that one is restarted in front of another";
    }
    if (search.seen == nullptr) return "its upstream '" + upstream + "' is not served on any port";
    const auto& s = search.seen->snapshot();
    return "its upstream '" + upstream + "' on port " + std::to_string(s.port) + " is " +
           state_phrase(s);
}

UpstreamLink Fleet::link_to(const Port& upstream) const {
    const int port = upstream.number();
    return {upstream.snapshot().handle, port, local_url(config_.supervisor.bind_host, port)};
}

Result<std::optional<UpstreamLink>> Fleet::upstream_link(const PortSnapshot& dependent,
                                                         Upstream which) const {
    const auto* model = config_.find_model(dependent.handle);
    if (model == nullptr || model->upstream.empty()) return std::optional<UpstreamLink>{};
    // Never its own port: a swap's incoming worker would run in front of the one it replaces.
    const auto search = find_upstream(model->upstream, dependent.profile, which, dependent.port);
    if (search.found != nullptr) return std::optional<UpstreamLink>{link_to(*search.found)};
    return Error{search.seen == nullptr ? "upstream_not_served" : "upstream_not_ready",
                 upstream_reason(model->upstream, search)};
}

std::optional<std::string> Fleet::upstream_gone(const PortSnapshot& dependent) const {
    // The upstream its worker was started in front of (a reload may have changed the
    // config's since: that applies at its next start).
    const auto* model = config_.find_model(dependent.handle);
    const std::string upstream = dependent.upstream ? dependent.upstream->handle
                                 : model != nullptr ? model->upstream
                                                    : std::string();
    // Still where its worker found it: a restart or a re-adoption of the upstream is waited
    // out in that port's backlog, not passed on.
    if (dependent.upstream) {
        const auto* at = find(dependent.upstream->port);
        if (at != nullptr && at->snapshot().handle == upstream && coming_or_serving(*at) &&
            !leads_to(*at, dependent.port))
            return std::nullopt;
    }
    const auto search = find_upstream(upstream, dependent.profile, Upstream::any, dependent.port);
    if (search.found == nullptr) return upstream_reason(upstream, search);
    if (!dependent.upstream) return std::nullopt;  // re-adopted: follow_upstreams records it
    return "its upstream '" + upstream + "' moved from port " +
           std::to_string(dependent.upstream->port) + " to port " +
           std::to_string(search.found->number()) + "; restarting in front of it there";
}

void Fleet::follow_upstreams() {
    if (shutting_down_) return;
    for (auto& [number, p] : ports_) {
        const auto& s = p->snapshot();
        const auto* model = config_.find_model(s.handle);
        if (s.stop_requested) continue;
        if (s.state == PortState::waiting) {
            // (A reload may have made its model one without an upstream: it starts now.)
            auto link = upstream_link(s, Upstream::ready);
            if (link) {
                p->start();
            } else {
                p->note_waiting(link.error().message);  // the reason, as the upstream changes
            }
        } else if ((s.state == PortState::starting || s.state == PortState::loading ||
                    s.state == PortState::ready) &&
                   (s.upstream || p->upstream_unknown())) {
            // (A worker started without an upstream whose model a reload made a chained one
            // runs on as it is: the reload reported it, and its next start applies it.)
            if (auto gone = upstream_gone(s)) {
                p->stop(*gone, Port::Then::wait_for_upstream);
            } else if (!s.upstream) {
                // A re-adopted worker whose upstream was not back when it was adopted: in
                // front of where its upstream is served now (the assignments survived with it).
                const auto search =
                    find_upstream(model->upstream, s.profile, Upstream::any, s.port);
                p->assume_upstream(link_to(*search.found));
            }
        }
    }
}

Status Fleet::check_upstream_served(int port, const std::string& handle,
                                    const std::string& profile) const {
    const auto* model = config_.find_model(handle);
    if (model == nullptr || model->upstream.empty()) return Ok{};
    const auto& upstream = model->upstream;
    const auto search = find_upstream(upstream, profile, Upstream::any, port);
    if (search.found != nullptr) return check_chain_avoids(port, handle, *search.found);
    if (search.loops != nullptr) return check_chain_avoids(port, handle, *search.loops);
    const auto* here = find(port);
    if (here != nullptr && here->snapshot().handle == upstream) {
        return Error{"upstream_replaced",
                     "port " + std::to_string(port) + " serves '" + upstream + "', which '" +
                         handle + "' runs in front of, and no other port does: serve '" + handle +
                         "' on another port"};
    }
    const auto name = "port " + std::to_string(port) + ": '" + handle + "' runs in front of '";
    if (search.seen == nullptr) {
        return Error{"upstream_not_served", name + upstream +
                                                "', which no port serves; load it on another "
                                                "port first (ensemble load PORT " +
                                                upstream + ")"};
    }
    const auto& seen = search.seen->snapshot();
    const auto at = std::to_string(seen.port);
    // A waiting proxy comes back by itself once what it waits for does.
    const auto advice = seen.state == PortState::waiting
                            ? "; serve what it waits for first"
                            : "; bring it back first (ensemble restart " + at + ")";
    return Error{"upstream_not_ready",
                 name + upstream + "', which is " + std::string(to_string(seen.state)) +
                     " on port " + at +
                     (seen.last_failure.empty() ? "" : " (" + seen.last_failure + ")") + advice};
}

Status Fleet::check_chain_avoids(int port, const std::string& handle, const Port& upstream) const {
    // The upstream's own chain, as its workers run (or, not started yet, would run): none of
    // it may lead back to `port`, which the new model replaces; the chain would wait for it.
    std::string path = "'" + handle + "' runs in front of";
    const Port* at = &upstream;
    for (std::size_t depth = 0; at != nullptr; ++depth) {
        if (depth > ports_.size()) {  // longer than there are ports: it loops somewhere
            return Error{"upstream_replaced", "port " + std::to_string(port) + ": " + path +
                                                  ", which loops; see 'ensemble status'"};
        }
        const auto& s = at->snapshot();
        path += " '" + s.handle + "' on port " + std::to_string(s.port);
        std::optional<int> next;
        if (s.upstream) {
            next = s.upstream->port;
        } else if (const auto* model = config_.find_model(s.handle);
                   model != nullptr && !model->upstream.empty()) {
            if (const auto* found =
                    find_upstream(model->upstream, s.profile, Upstream::any, s.port).found)
                next = found->number();
        }
        if (!next) return Ok{};
        const auto* following = find(*next);
        if (*next == port) {
            return Error{"upstream_replaced",
                         "port " + std::to_string(port) + ": " + path +
                             ", which runs in front of '" +
                             (following != nullptr ? following->snapshot().handle : "?") +
                             "' here: the chain would wait for what this replaces; serve '" +
                             handle + "' on another port"};
        }
        path += ", which runs in front of";
        at = following;
    }
    return Ok{};
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
    for_each_run([&](Port& run) { run.tick(now, stalled); });
    follow_upstreams();
    unload_idle_on_demand(now);
    // A replaced worker is forgotten once it has gone (its exit explained, its engine stopped).
    std::erase_if(side_runs_, [](const auto& run) {
        return run->role() == Port::Role::outgoing && run->snapshot().pid == 0 &&
               !is_running(run->state());
    });
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
            port_at(r.port).leave_unverified(r, check.message);
            continue;
        }
        const auto want = wanted.find(r.port);
        if (alive && want != wanted.end() && want->second.handle == r.handle) {
            auto& survivor = port_at(r.port);
            survivor.assign(r.handle, want->second.profile);
            survivor.adopt_recorded(r);
            // A swap's incoming worker, never recorded, may have left its engine on the other
            // files (a live worker's record is locked: only one left behind is stopped).
            stop_engine_left_behind(*this, r.port, 1 - r.slot, {}, this_boot);
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
            // Killed with everything else (kill -9, a crash): its engine may still run, and so
            // may that of a swap's incoming worker, on the port's other files (never recorded).
            for (int files = 0; files < protocol::kSlots; ++files) {
                const auto told = files == r.slot ? EngineRecord{r.engine_pid, r.engine_start_time,
                                                                 r.engine_group}
                                                  : EngineRecord{};
                stop_engine_left_behind(*this, r.port, files, told, this_boot);
            }
        }
        log_unsaved(store_->remove_worker(r.port),
                    "that port " + std::to_string(r.port) + " has no worker now");
    }
    if (config_.supervisor.front_door) restore_kept_alive();
    for (const auto& [number, a] : wanted) {
        if (find(number) != nullptr) continue;
        auto& wanted_port = port_at(number);
        wanted_port.assign(a.handle, a.profile);
        const bool held_by_dismissed = dismissed_holder(number).has_value();  // waits in start
        if (auto free = check_port_free(number);
            !held_by_dismissed && !free && free.error().code == "port_busy") {
            // Perhaps a worker of ours whose record was lost: it is adopted when it reconnects.
            wanted_port.wait_for_survivor(kSurvivorGrace);
            continue;
        }
        wanted_port.start();
    }
}

Status Fleet::on_register(WorkerLinkPeer* peer, const protocol::Register& m,
                          std::optional<ListeningSocket> port_socket) {
    auto* p = expecting(m);
    if (p == nullptr) {
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
        p = find(m.port);
    }
    p->on_register(peer, std::move(port_socket));
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
    auto* p = find(m.port);
    if (p != nullptr) {
        const auto& now_there = p->snapshot();
        if (now_there.handle != m.handle) {
            return Error{"unknown_worker", "port " + port + " should serve '" + now_there.handle +
                                               "', not '" + m.handle + "'"};
        }
        // Ours or one we wait for (its record says so) holds the port, it is being stopped,
        // or it is `failed` (crash loop, or a survivor whose identity could not be read).
        if (p->occupied() || now_there.state != PortState::backoff) {
            return Error{
                "unknown_worker",
                "port " + port + " is " + to_string(now_there.state) +
                    (now_there.pid != 0 ? " with worker pid " + std::to_string(now_there.pid)
                                        : std::string())};
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
        p = &port_at(m.port);
        p->assign(m.handle, "");
    }
    p->adopt_unrecorded(m, *identity);  // registered at once by on_register
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
            const auto* p = find(d.port);
            if (p == nullptr || p->snapshot().pid == 0) {
                for (int files = 0; files < protocol::kSlots; ++files)
                    stop_engine_left_behind(*this, d.port, files, {}, processes_->boot_id());
            }
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
    for (const int number : freed) {
        auto* p = find(number);
        if (p != nullptr && p->state() == PortState::backoff && p->snapshot().pid == 0 &&
            !p->snapshot().stop_requested && !shutting_down_ && !dismissed_holder(number))
            p->start();
    }
}

void Fleet::on_heartbeat(WorkerLinkPeer* peer, const protocol::WorkerStats& stats) {
    for_each_run([&](Port& run) {
        if (run.linked_to(peer)) run.on_heartbeat(stats);
    });
}

void Fleet::on_link_closed(WorkerLinkPeer* peer) {
    for_each_run([&](Port& run) { run.on_link_closed(peer); });
    tick();  // the worker may have exited; if not, it reconnects
}

awaitable<bool> Fleet::wait_for(int port, const std::function<bool(const PortSnapshot&)>& done,
                                Clock::time_point deadline) {
    const std::function<bool()> port_done = [this, port, &done] {
        const auto* p = find(port);
        return p != nullptr && done(p->snapshot());
    };
    const bool held = co_await wait_until(port_done, deadline);
    co_return held;
}

awaitable<bool> Fleet::wait_until(const std::function<bool()>& done, Clock::time_point deadline) {
    for (;;) {
        if (done()) co_return true;
        if (now() >= deadline) co_return false;
        const auto until = std::min(deadline, now() + std::chrono::milliseconds(500));
        co_await time_->sleep_until(until);
        tick();
    }
}

awaitable<bool> Fleet::wait_settled(int port, Clock::time_point deadline) {
    // Named, not a temporary inside the co_await expression (GCC 12 may destroy those twice).
    const std::function<bool(const PortSnapshot&)> settled_state = [this](const PortSnapshot& p) {
        // A chained model waits for its upstream as long as that is coming.
        const bool waits_in_vain =
            p.state == PortState::waiting && !upstream_link(p, Upstream::any);
        return p.state == PortState::ready || p.state == PortState::backoff ||
               p.state == PortState::failed || p.state == PortState::stopped || waits_in_vain;
    };
    const bool settled = co_await wait_for(port, settled_state, deadline);
    const auto* p = find(port);
    co_return settled&& p != nullptr && p->state() == PortState::ready;
}

awaitable<bool> Fleet::wait_stopped(int port, Clock::time_point deadline) {
    const std::function<bool(const PortSnapshot&)> not_running = [](const PortSnapshot& p) {
        return !is_running(p.state);
    };
    const bool stopped = co_await wait_for(port, not_running, deadline);
    co_return stopped;
}

awaitable<void> Fleet::stop_all(std::chrono::milliseconds timeout) {
    shutting_down_ = true;  // no restart or retry timer starts a worker from here on
    for_each_run([](Port& run) {
        if (is_running(run.state())) run.stop("the supervisor is stopping");
    });
    // One condition over every run, looked at afresh after each wait: a command still in
    // flight may change the ports meanwhile (no iterator is held across a co_await).
    const std::function<bool()> all_stopped = [this] {
        bool running = false;
        for_each_run([&](Port& run) { running = running || is_running(run.state()); });
        return !running;
    };
    if (co_await wait_until(all_stopped, now() + timeout)) co_return;
    // Nothing of ours may outlive ensembled's stop (under systemd, KillMode=process leaves
    // whatever is left in the unit's cgroup): a worker still draining now is killed.
    const auto why =
        "the worker did not stop within the supervisor's shutdown time (" +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) + " s)";
    for_each_run([&](Port& run) {
        if (is_running(run.state())) run.kill_now(why);
    });
    co_await wait_until(all_stopped, now() + kKilledWorkerReaped);
}

}  // namespace ensemble
