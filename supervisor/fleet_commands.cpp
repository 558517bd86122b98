// The operator's verbs on the fleet: load, unload, swap, restart, profiles, status, logs, events,
// reload. Each writes the desired state to the store first, then acts, then waits for the result,
// and answers with a value (supervisor/control_api.h makes the reply).
#include <spdlog/spdlog.h>

#include <set>

#include "supervisor/fleet.h"

namespace ensemble {

namespace {

// A model load may take minutes (a 100 GB model from disk); the worker kills loads that stall.
constexpr auto kLoadTimeout = std::chrono::minutes(15);
// How long a command waits for a worker to stop: until it is killed for not stopping (after
// `stop_timeout`), and a little more for the kill to land.
std::chrono::milliseconds stop_wait(std::chrono::milliseconds stop_timeout) {
    return stop_timeout + std::chrono::seconds(5);
}

}  // namespace

Status Fleet::check_port_free(int port) const {
    if (const auto* p = find(port); p != nullptr && (is_running(p->state()) || p->listening()))
        return Ok{};  // ours
    return processes_->port_free(config_.supervisor.bind_host, port);
}

Status Fleet::check_port_free_for_operator(int port) const {
    if (const auto& http = config_.supervisor.http; http && http->port == port) {
        return Error{"port_busy", "port " + std::to_string(port) +
                                      " is ensembled's own status listener (supervisor.http); "
                                      "choose another port"};
    }
    auto free = check_port_free(port);
    if (free || free.error().code != "port_busy") return free;
    return Error{"port_busy", "port " + std::to_string(port) + " is in use by another process (" +
                                  processes_->port_holder(port) +
                                  "); stop it or choose another port"};
}

PortReport Fleet::report(const Port& port) const {
    const auto& s = port.snapshot();
    PortReport r{s, policy_for(s.port, s.handle, s.profile), std::nullopt, 0, std::nullopt};
    if (const auto* model = config_.find_model(s.handle)) r.model = *model;
    for (const auto& run : side_runs_) {
        const auto& side = run->snapshot();
        if (side.port == s.port && run->role() == Port::Role::incoming)
            r.incoming = PortReport::Incoming{side.handle, side.state, side.load};
    }
    if (s.state == PortState::ready) {
        const auto now = this->now();
        r.uptime_s =
            std::chrono::duration_cast<std::chrono::seconds>(now - s.ready_since.value_or(now))
                .count();
    }
    return r;
}

FleetStatus Fleet::status() const {
    FleetStatus status;
    for (const auto& [number, port] : ports_)
        status.ports.push_back(report(*port));
    status.budget = budget();
    if (status.budget.over_budget) {
        status.warnings.push_back("measured memory " + format_bytes(status.budget.measured_bytes) +
                                  " is over the budget of " +
                                  format_bytes(status.budget.budget_bytes));
    }
    for (const auto& w : status.budget.wired.warnings)
        status.warnings.push_back(w);
    for (const auto& run : side_runs_) {
        const auto& s = run->snapshot();
        const auto* serving = find(s.port);
        if (run->role() != Port::Role::incoming || serving == nullptr) continue;
        status.warnings.push_back("port " + std::to_string(s.port) + ": swapping to '" + s.handle +
                                  "', loading beside '" + serving->snapshot().handle + "' (" +
                                  to_string(s.state) + ", worker pid " + std::to_string(s.pid) +
                                  ")");
    }
    if (!store_->backup_problem().empty()) status.warnings.push_back(store_->backup_problem());
    if (front_door_report && config_.supervisor.front_door) status.front_door = front_door_report();
    status.config = config_.source;
    status.bind_host = config_.supervisor.bind_host;
    status.uptime_s = std::chrono::duration_cast<std::chrono::seconds>(now() - started_).count();
    return status;
}

awaitable<bool> Fleet::replace_worker(int port, const std::string& handle,
                                      const std::string& profile) {
    if (auto& running = port_at(port); is_running(running.state())) {
        running.stop("replacing '" + running.snapshot().handle + "' with '" + handle + "'",
                     Port::Then::hand_the_port_over);
        const auto wait = stop_wait(running.stop_timeout());
        if (!co_await wait_stopped(port, now() + wait)) {
            port_at(port).cancel_hand_over();
            co_return false;
        }
    }
    auto& fresh = port_at(port);
    fresh.assign(handle, profile);
    fresh.forget_failures();
    // A start that fails is retried like any failure at start (or, for ensembled's own
    // shortage, without counting against the port): the port stays assigned and comes up.
    fresh.start();
    const bool ready = co_await wait_settled(port, now() + kLoadTimeout);
    co_return ready;
}

std::string Fleet::active_profile_for(int port, const std::string& handle) const {
    const auto active = store_->meta("active_profile");
    return active && find_assignment(config_, *active, port, handle) != nullptr ? *active : "";
}

awaitable<Result<PortReport>> Fleet::load(int port, const std::string& handle,
                                          const std::string& asked_profile, bool force) {
    // A load of what the active profile puts on this port (after an unload, say) is the
    // profile's again.
    const std::string profile =
        asked_profile.empty() ? active_profile_for(port, handle) : asked_profile;
    if (config_.find_model(handle) == nullptr) {
        co_return Error{"unknown_model", "unknown model '" + handle +
                                             "'; the config defines: " + config_.model_names()};
    }
    if (const auto* p = find(port); p != nullptr && is_running(p->state())) {
        const auto& rt = p->snapshot();
        if (rt.handle == handle) co_return report(*p);
        // Truthful about a port that is assigned but not serving (a load failing in a loop).
        const auto what = rt.state == PortState::ready
                              ? "already serves '" + rt.handle + "'"
                              : "is assigned '" + rt.handle + "' (" + to_string(rt.state) +
                                    (rt.last_failure.empty() ? "" : ": " + rt.last_failure) + ")";
        co_return Error{"port_busy", "port " + std::to_string(port) + " " + what +
                                         "; use 'ensemble swap " + std::to_string(port) + " " +
                                         handle + "' or 'ensemble unload " + std::to_string(port) +
                                         "'"};
    }
    if (auto allowed = check_port_allowed(config_.supervisor, port); !allowed)
        co_return allowed.error();
    if (auto kept = check_port_not_reserved(config_.supervisor, port, force); !kept)
        co_return kept.error();
    if (in_pool(port) && !force) {
        co_return Error{"pool_port", "port " + std::to_string(port) +
                                         " is one of supervisor.front_door.ports, where the "
                                         "front door loads models on demand (and unloads them "
                                         "when idle): choose another port, or --force"};
    }
    if (auto free = check_port_free_for_operator(port); !free) co_return free.error();
    if (auto served = check_upstream_served(port, handle, profile); !served)
        co_return served.error();
    // (named, not temporaries: GCC 12 miscompiles non-trivial temporaries in co_await)
    const std::map<int, std::string> starts{{port, handle}};
    const std::set<int> released;
    if (auto admitted = co_await admit(starts, released, profile); !admitted)
        co_return admitted.error();
    if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok) co_return ok.error();
    unassigned_.erase(port);
    const bool ready = co_await replace_worker(port, handle, profile);
    const auto& rt = port_at(port).snapshot();
    if (!ready) {
        co_return Error{"load_failed",
                        "'" + handle + "' did not become ready on port " + std::to_string(port) +
                            ": " +
                            (rt.last_failure.empty() ? to_string(rt.state) : rt.last_failure) +
                            " (see 'ensemble logs " + std::to_string(port) + "')"};
    }
    co_return report(port_at(port));
}

awaitable<Status> Fleet::unload(int port, std::string reason) {
    auto* p = find(port);
    auto assignments = store_->assignments();
    const bool assigned =
        assignments && std::any_of(assignments->begin(), assignments->end(),
                                   [&](const Assignment& a) { return a.port == port; });
    if (p == nullptr && !assigned)
        co_return Error{"not_loaded", "nothing is assigned to port " + std::to_string(port)};
    if (auto ok = store_->remove_assignment(port); !ok) co_return ok.error();
    unassigned_.insert(port);
    forget_kept_alive(port);  // a later load of the same model starts from the default
    if (p != nullptr) {
        p->stop(reason);
        const auto wait = stop_wait(p->stop_timeout());
        co_await wait_stopped(port, now() + wait);
        ports_.erase(port);
    }
    event(port, "unload",
          "port " + std::to_string(port) + " unloaded" +
              (reason == kUnloadedByOperator ? "" : ": " + reason));
    co_return Ok{};
}

awaitable<Result<PortReport>> Fleet::swap(int port, const std::string& handle) {
    const auto* p = find(port);
    if (p == nullptr || !is_running(p->state())) {
        co_return Error{"not_loaded",
                        "nothing runs on port " + std::to_string(port) + "; use 'ensemble load'"};
    }
    if (config_.find_model(handle) == nullptr) {
        co_return Error{"unknown_model", "unknown model '" + handle +
                                             "'; the config defines: " + config_.model_names()};
    }
    const std::string old_handle = p->snapshot().handle;
    const std::string old_profile = p->snapshot().profile;
    if (old_handle == handle) co_return report(*p);
    // A swap away makes the port ad hoc, a swap back makes it the profile's again.
    const std::string profile = active_profile_for(port, handle);
    if (auto served = check_upstream_served(port, handle, profile); !served)
        co_return served.error();
    // A worker an earlier swap replaced may still drain here (or one told to stop after a
    // restart of ensembled), holding memory and the port's other set of files: it is gone
    // within stop_timeout.
    const std::function<bool()> port_clear = [this, port] {
        return !has_side_run(port) && !dismissed_holder(port);
    };
    const auto wait = stop_wait(config_.supervisor.health.stop_timeout);
    const bool clear = co_await wait_until(port_clear, now() + wait);
    if (shutting_down_) co_return shutting_down_error(port, handle);
    if (!clear) {
        co_return Error{"swap_busy", "the worker an earlier swap replaced on port " +
                                         std::to_string(port) +
                                         " has not stopped yet; try again in a moment"};
    }
    p = find(port);
    if (p == nullptr || !is_running(p->state()) || p->snapshot().handle != old_handle) {
        co_return Error{"port_changed",
                        "port " + std::to_string(port) +
                            " changed while the swap waited; see 'ensemble status'"};
    }
    // The chains may have changed while it waited (a proxy restarted in front of this port).
    if (auto served = check_upstream_served(port, handle, profile); !served)
        co_return served.error();
    // A chained model goes beside only with its upstream ready (it would wait, not load).
    PortSnapshot incoming;
    incoming.handle = handle;
    incoming.port = port;
    incoming.profile = profile;
    const bool upstream_ready = static_cast<bool>(upstream_link(incoming, Upstream::ready));
    // Beside, the new worker takes the serving socket: not when a reload moved the port to
    // another address (bind_host), which only a start on a new socket can follow.
    if (p->state() == PortState::ready && p->listening() &&
        p->listening_socket().bound_to(config_.supervisor.bind_host) &&
        !p->snapshot().stop_requested && upstream_ready && fits_beside(port, handle, profile)) {
        auto swapped = co_await swap_beside(port, handle, profile);
        co_return swapped;
    }
    // One after the other: connections wait in the port's backlog (up to hold_while_loading)
    // while the old worker drains and the new one loads.
    const std::map<int, std::string> starts{{port, handle}};
    const std::set<int> released{port};
    if (auto admitted = co_await admit(starts, released, profile); !admitted)
        co_return admitted.error();
    if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok) co_return ok.error();
    unassigned_.erase(port);
    event(port, "swap", "'" + old_handle + "' -> '" + handle + "'");
    if (co_await replace_worker(port, handle, profile)) co_return report(port_at(port));

    // The new model failed: bring the old one back, and say why.
    const auto& failed = port_at(port).snapshot();
    const std::string why =
        failed.last_failure.empty() ? to_string(failed.state) : failed.last_failure;
    event(port, "swap_rollback",
          "'" + handle + "' failed (" + why + "); restoring '" + old_handle + "'");
    if (auto ok = store_->set_assignment({port, old_handle, old_profile, 0}); !ok)
        co_return ok.error();
    const bool restored = co_await replace_worker(port, old_handle, old_profile);
    co_return Error{"swap_failed", "swap of port " + std::to_string(port) + " to '" + handle +
                                       "' failed: " + why + "; " +
                                       (restored ? "'" + old_handle + "' is serving again"
                                                 : "restoring '" + old_handle + "' also failed: " +
                                                       port_at(port).snapshot().last_failure)};
}

bool Fleet::fits_beside(int port, const std::string& handle, const std::string& profile) const {
    auto estimate = estimate_for(port, handle, profile);
    if (!estimate) return false;  // nothing known of its size: not beside another model
    const std::vector<Placement> incoming{
        {port, handle, estimate->total(), policy_for(port, handle, profile).priority}};
    const auto plan = plan_admission(budget_bytes().value_or(budgetable_memory()),
                                     budget_holders(now()), incoming, {});
    return plan.admitted && plan.evict.empty();
}

Error Fleet::shutting_down_error(int port, const std::string& handle) const {
    return Error{"shutting_down", "ensembled is shutting down: port " + std::to_string(port) +
                                      " was not swapped to '" + handle + "'"};
}

awaitable<Result<PortReport>> Fleet::swap_beside(int port, const std::string& handle,
                                                 const std::string& profile) {
    const auto name = std::to_string(port);
    auto& serving = port_at(port);
    const std::string old_handle = serving.snapshot().handle;
    PortHost& host = *this;
    auto run = std::make_unique<Port>(host, port);
    run->assign(handle, profile);
    auto& incoming = *run;
    side_runs_.push_back(std::move(run));
    event(port, "swap",
          "'" + old_handle + "' -> '" + handle + "': loading beside it; '" + old_handle +
              "' serves until '" + handle + "' is ready");
    // The other set of files is free: swap() waited for whatever held it.
    incoming.start_beside(serving.listening_socket(), 1 - serving.snapshot().files);
    const auto attempt = incoming.attempt();
    const std::function<bool()> settled = [this, port, attempt] {
        const auto* in = find_run(port, attempt);
        return shutting_down_ || in == nullptr ||
               (in->state() != PortState::starting && in->state() != PortState::loading);
    };
    co_await wait_until(settled, now() + kLoadTimeout);
    auto* in = find_run(port, attempt);
    auto* old = find(port);
    // The old worker may have failed, been evicted or been stopped while the new one loaded.
    const bool old_serves = old != nullptr && old->state() == PortState::ready &&
                            !old->snapshot().stop_requested && old->listening() &&
                            old->snapshot().handle == old_handle;
    std::string why;
    if (shutting_down_) {
        why = "ensembled is shutting down";
    } else if (in == nullptr) {
        why = "the new worker is gone";
    } else if (in->state() != PortState::ready || !in->snapshot().linked) {
        why = in->snapshot().last_failure;
        const auto load_limit = std::chrono::duration_cast<std::chrono::seconds>(kLoadTimeout);
        if (why.empty() && is_running(in->state()))
            why = "not ready within " + std::to_string(load_limit.count()) + " s";
        if (why.empty()) why = to_string(in->state());
    } else if (!old_serves) {
        why = "'" + old_handle + "' stopped serving meanwhile (" +
              (old == nullptr ? "unloaded" : to_string(old->state())) + "); nothing was changed";
    } else if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok) {
        why = ok.error().message;  // a restart would bring back what the store says
    }
    if (!why.empty()) {
        if (in != nullptr) {
            in->stop("the swap to '" + handle + "' failed");
            in->step_down();  // forgotten once it has gone
        }
        const auto after =
            old_serves ? "; '" + old_handle + "' served throughout and serves on" : std::string();
        event(port, "swap_failed", "'" + handle + "' failed (" + why + ")" + after);
        co_return Error{"swap_failed",
                        "swap of port " + name + " to '" + handle + "' failed: " + why + after};
    }
    unassigned_.erase(port);
    // The new worker takes the port's connections; the old one drains what it has taken.
    auto socket = old->step_down();
    const auto incoming_at = std::find_if(side_runs_.begin(), side_runs_.end(),
                                          [in](const auto& r) { return r.get() == in; });
    std::swap(ports_.at(port), *incoming_at);
    in->promote(std::move(socket));
    old->stop("replaced by '" + handle + "'");
    co_return report(*in);
}

awaitable<Result<PortReport>> Fleet::restart(int port) {
    const auto* p = find(port);
    if (p == nullptr)
        co_return Error{"not_loaded", "nothing is assigned to port " + std::to_string(port)};
    const std::string handle = p->snapshot().handle;
    const std::string profile = p->snapshot().profile;
    // A chained model whose upstream nobody serves would only stop and wait for it.
    if (auto served = check_upstream_served(port, handle, profile); !served)
        co_return served.error();
    if (p->state() == PortState::failed || p->state() == PortState::stopped) {
        // Not holding memory now: it must fit again, like a load.
        const std::map<int, std::string> starts{{port, handle}};
        const std::set<int> released{port};
        if (auto admitted = co_await admit(starts, released, profile); !admitted)
            co_return admitted.error();
        // An evicted port is unassigned: restarting it is asking for it back.
        if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok) co_return ok.error();
    }
    event(port, "restart", "restart requested by the operator");
    if (!co_await replace_worker(port, handle, profile)) {
        co_return Error{"restart_failed",
                        "port " + std::to_string(port) +
                            " did not become ready: " + port_at(port).snapshot().last_failure};
    }
    co_return report(port_at(port));
}

namespace {

Error unknown_profile(const Config& config, const std::string& name) {
    std::string known;
    for (const auto& [n, _] : config.profiles)
        known += (known.empty() ? "" : ", ") + n;
    return Error{"unknown_profile", "unknown profile '" + name + "'; the config defines: " +
                                        (known.empty() ? "none" : known)};
}

// The profile's ports, each after the port serving its upstream (a chained model starts once
// that is ready), otherwise by number.
std::vector<std::pair<int, PortAssignment>> chain_order(const Config& config,
                                                        const Profile& profile) {
    const auto depth = [&](const std::string& handle) {
        int d = 0;
        for (const auto* m = config.find_model(handle); m != nullptr && !m->upstream.empty();
             m = config.find_model(m->upstream))
            ++d;  // the config has no cycles (load_config refuses them)
        return d;
    };
    std::vector<std::pair<int, PortAssignment>> ports(profile.ports.begin(), profile.ports.end());
    std::stable_sort(ports.begin(), ports.end(), [&](const auto& a, const auto& b) {
        return depth(a.second.model) < depth(b.second.model);
    });
    return ports;
}

}  // namespace

awaitable<Result<ProfileLoad>> Fleet::profile_load(const std::string& name, bool force) {
    const auto it = config_.profiles.find(name);
    if (it == config_.profiles.end()) co_return unknown_profile(config_, name);
    const Profile profile = it->second;
    // All or nothing: every port must be free (or already ours) before anything changes.
    for (const auto& [port, a] : profile.ports) {
        if (auto kept = check_port_not_reserved(config_.supervisor, port, force); !kept) {
            co_return Error{kept.error().code, "profile '" + name + "': " + kept.error().message};
        }
        if (auto free = check_port_free_for_operator(port); !free) co_return free.error();
    }
    // Within the memory budget once the ports it changes or drops stop (all or nothing).
    std::map<int, std::string> starts;
    std::set<int> released;
    for (const auto& [number, p] : ports_) {
        const auto wanted = profile.ports.find(number);
        if (wanted == profile.ports.end() || wanted->second.model != p->snapshot().handle)
            released.insert(number);
    }
    for (const auto& [number, a] : profile.ports) {
        const auto* p = find(number);
        if (p == nullptr || p->snapshot().handle != a.model || !is_running(p->state()))
            starts[number] = a.model;
    }
    if (auto admitted = co_await admit(starts, released, name); !admitted)
        co_return admitted.error();
    std::vector<Assignment> desired;
    for (const auto& [port, a] : profile.ports)
        desired.push_back({port, a.model, name, 0});
    if (auto ok = store_->replace_assignments(desired); !ok) co_return ok.error();
    for (const auto& a : desired)
        unassigned_.erase(a.port);
    log_unsaved(store_->set_meta("active_profile", name), "the active profile");
    event(0, "profile", "loading profile '" + name + "'");
    std::vector<int> stale;
    for (const auto& [number, p] : ports_) {
        if (!profile.ports.count(number)) stale.push_back(number);
    }
    for (int port : stale) {
        // The profile's assignments are written already: a port that could not be unloaded
        // is said, and the load goes on.
        const auto unloaded = co_await unload(port);
        if (!unloaded) event(port, "unload_failed", unloaded.error().message);
    }
    ProfileLoad loaded{name, {}, true};
    for (const auto& [number, a] : chain_order(config_, profile)) {
        auto* p = find(number);
        bool ready =
            p != nullptr && p->snapshot().handle == a.model && p->state() == PortState::ready;
        if (ready) {
            p->set_profile(name);
        } else {
            const int n = number;
            const std::string model = a.model;
            ready = co_await replace_worker(n, model, name);
        }
        loaded.complete = loaded.complete && ready;
        loaded.ports.push_back(report(port_at(number)));
    }
    co_return loaded;
}

awaitable<Result<std::vector<int>>> Fleet::profile_unload(const std::string& name) {
    std::vector<int> ports;
    if (name.empty()) {
        for (const auto& [port, _] : ports_)
            ports.push_back(port);
        if (auto ok = store_->replace_assignments({}); !ok) co_return ok.error();
        log_unsaved(store_->set_meta("active_profile", ""), "that no profile is active");
    } else {
        // The profile's ports are those still serving what it put there (by the persisted
        // assignments and the running ports alike): a port swapped or loaded by hand since is
        // no longer the profile's, and stays. A profile a reload dropped may still hold ports.
        auto assignments = store_->assignments();
        if (!assignments) co_return assignments.error();
        std::set<int> ours;
        for (const auto& a : *assignments)
            if (a.profile == name) ours.insert(a.port);
        for (const auto& [number, run] : ports_)
            if (run->snapshot().profile == name) ours.insert(number);
        if (ours.empty() && !config_.profiles.contains(name))
            co_return unknown_profile(config_, name);
        ports.assign(ours.begin(), ours.end());
        if (const auto active = store_->meta("active_profile"); active && *active == name)
            log_unsaved(store_->set_meta("active_profile", ""), "that no profile is active");
    }
    for (int port : ports) {
        const auto unloaded = co_await unload(port);
        if (!unloaded) event(port, "unload_failed", unloaded.error().message);
    }
    co_return ports;
}

std::vector<ProfileListing> Fleet::profiles() const {
    const auto active = store_->meta("active_profile");
    std::vector<ProfileListing> list;
    for (const auto& [name, profile] : config_.profiles) {
        ProfileListing listing{name, {}, active && *active == name};
        for (const auto& [port, a] : profile.ports)
            listing.ports[port] = a.model;
        list.push_back(std::move(listing));
    }
    return list;
}

Result<PortLogs> Fleet::logs(int port, int lines) const {
    // The serving worker's files (a swap may have moved the port to its other set).
    const auto* p = find(port);
    const auto files =
        port_files_in(config_.supervisor.state_dir, port, p != nullptr ? p->snapshot().files : 0);
    const auto& worker = files.worker_log;
    const auto& engine = files.engine_log;
    if (!std::filesystem::exists(engine) && !std::filesystem::exists(worker)) {
        return Error{"no_logs", "no logs for port " + std::to_string(port) + " in " +
                                    engine.parent_path().string()};
    }
    return PortLogs{engine, worker, tail_lines(engine, lines), tail_lines(worker, lines)};
}

void Fleet::note_failure(int port, std::string_view verb, const std::string& message) {
    event(port, "command_failed", std::string(verb) + " (not waited for) failed: " + message);
}

Result<std::vector<Event>> Fleet::events(int lines, std::int64_t after_id) const {
    return after_id > 0 ? store_->events_after(after_id, lines) : store_->newest_events(lines);
}

Result<std::vector<int>> Fleet::reload() {
    auto loaded = load_config(config_.source);
    if (!loaded.config) {
        std::string text;
        for (const auto& i : loaded.issues)
            text += "\n  " + i.to_string();
        return Error{"bad_config", "the config has errors; keeping the running one:" + text};
    }
    // Where ensembled keeps its state and sockets is fixed for its life (its sockets are open
    // there, its workers log there).
    for (const auto& [name, before, after] :
         {std::tuple{"state_dir", config_.supervisor.state_dir,
                     loaded.config->supervisor.state_dir},
          std::tuple{"run_dir", config_.supervisor.run_dir, loaded.config->supervisor.run_dir}}) {
        if (before != after) {
            return Error{"restart_needed", std::string("the new config moves ") + name + " from " +
                                               before.string() + " to " + after.string() +
                                               "; keeping the running config. Restart "
                                               "ensembled to move it"};
        }
    }
    // The front door's process and socket are set up at start: its settings stay until then.
    auto& door_after = loaded.config->supervisor.front_door;
    const auto& door_before = config_.supervisor.front_door;
    if (door_after != door_before) {
        event(0, "reload",
              "supervisor.front_door changed; the change takes effect when ensembled restarts");
    }
    door_after = door_before;
    // A model a port is assigned must stay defined: its next restart would fail, leaving the
    // port down. Such a config is refused, naming the ports, until they are swapped or unloaded.
    std::string orphaned;
    const auto assigned = store_->assignments();
    if (!assigned) return assigned.error();
    for (const auto& a : *assigned) {
        if (loaded.config->find_model(a.handle) == nullptr)
            orphaned +=
                (orphaned.empty() ? "" : ", ") + std::to_string(a.port) + " ('" + a.handle + "')";
    }
    if (!orphaned.empty()) {
        return Error{"model_in_use",
                     "the new config no longer defines the model of port(s) " + orphaned +
                         "; keeping the running config. Swap or unload those ports first "
                         "(ensemble unload PORT), then reload"};
    }
    // A port whose worker would now start differently from how it runs is reported, not
    // silently restarted (a change undone by the next reload is no change).
    std::vector<int> changed;
    for (const auto& [number, p] : ports_) {
        const auto& rt = p->snapshot();
        if (!is_running(rt.state)) continue;  // its next start takes the new config anyway
        const auto after =
            launcher_->plan(*loaded.config, number, rt.handle,
                            find_assignment(*loaded.config, rt.profile, number, rt.handle),
                            WorkerSlot{.files = rt.files, .upstream = rt.upstream});
        const auto* model = loaded.config->find_model(rt.handle);
        const bool upstream_changed =
            rt.upstream && model != nullptr && model->upstream != rt.upstream->handle;
        if (!after || after->command != rt.command || upstream_changed) changed.push_back(number);
    }
    config_ = std::move(*loaded.config);
    event(0, "reload",
          "configuration reloaded; " + std::to_string(changed.size()) + " port(s) changed");
    return changed;
}

awaitable<void> Fleet::wait_turn() {
    while (command_running_) {
        const auto until = now() + std::chrono::seconds(1);
        co_await time_->sleep_until(until);  // woken when the running command ends
    }
    command_running_ = true;
}

void Fleet::end_turn() {
    command_running_ = false;
    wake();
}

}  // namespace ensemble
