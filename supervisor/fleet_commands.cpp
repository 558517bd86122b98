// The operator's verbs on the fleet: load, unload, swap, restart, profiles, status, logs, events,
// reload. Each writes the desired state to the store first, then acts, then waits for the result.
#include <spdlog/spdlog.h>

#include <set>

#include "supervisor/fleet.h"

namespace ensemble {

namespace {

using nlohmann::json;

// A model load may take minutes (a 100 GB model from disk); the worker kills loads that stall.
constexpr auto kLoadTimeout = std::chrono::minutes(15);
// How long a command waits for a worker to stop: until it is killed for not stopping, and a
// little more for the kill to land.
std::chrono::milliseconds stop_wait(const Config& config) {
    return config.supervisor.health.stop_timeout + std::chrono::seconds(5);
}

json failure(const std::string& code, const std::string& message) {
    return protocol::error_reply(Error{code, message});
}

std::string known_models(const Config& config) {
    std::string s;
    for (const auto& [name, _] : config.models)
        s += (s.empty() ? "" : ", ") + name;
    return s;
}

}  // namespace

Status Fleet::check_port_free(int port) const {
    if (ports_.count(port) && is_running(ports_.at(port)->state)) return Ok{};  // ours
    return processes_->port_free(config_.supervisor.bind_host, port);
}

json Fleet::port_json(const PortRuntime& rt) const {
    const auto now = this->now();
    json j = {{"port", rt.port},
              {"model", rt.handle},
              {"profile", rt.profile},
              {"state", to_string(rt.state)},
              {"pid", rt.pid},
              {"engine_pid", rt.stats.engine_pid},
              {"engine_state", rt.stats.state},
              {"restarts", rt.restarts},
              {"engine_restarts", rt.stats.engine_restarts},
              {"engine_last_exit", rt.stats.engine_last_exit},
              {"memory_bytes", rt.stats.memory_bytes},
              {"requests", rt.stats.requests},
              {"tokens", rt.stats.tokens},
              {"tokens_per_s", rt.tokens_per_s},
              {"queue_depth", rt.stats.queue_depth},
              {"uptime_s", rt.state == PortState::ready
                               ? std::chrono::duration_cast<std::chrono::seconds>(
                                     now - rt.ready_since.value_or(now))
                                     .count()
                               : 0},
              {"last_failure", rt.last_failure}};
    if (rt.state == PortState::failed || rt.state == PortState::backoff)
        j["last_log_lines"] = rt.last_log_lines;
    j.update(memory_json(rt));
    if (const auto* model = config_.find_model(rt.handle)) {
        j["memory_configured_bytes"] = model->memory_bytes.value_or(0);
        j["aliases"] = model->aliases;
        j["model_path"] = model->path;
        j["engine"] = model->engine;
    }
    return j;
}

json Fleet::status() const {
    json ports = json::array();
    for (const auto& [port, rt] : ports_)
        ports.push_back(port_json(*rt));
    const auto memory = budget()["result"];
    json warnings = json::array();
    if (memory["over_budget"].get<bool>()) {
        warnings.push_back("measured memory " + format_bytes(memory["measured_bytes"]) +
                           " is over the budget of " + format_bytes(memory["budget_bytes"]));
    }
    for (const auto& w : memory["gpu_wired_limit"]["warnings"])
        warnings.push_back(w);
    if (!store_->backup_problem().empty()) warnings.push_back(store_->backup_problem());
    return protocol::ok_reply(
        {{"ports", ports},
         {"memory",
          {{"budget_bytes", memory["budget_bytes"]},
           {"reserved_bytes", memory["reserved_bytes"]},
           {"measured_bytes", memory["measured_bytes"]},
           {"free_bytes", memory["free_bytes"]},
           {"gpu_wired_limit_bytes", memory["gpu_wired_limit"]["bytes"]},
           {"mlx_bytes", memory["gpu_wired_limit"]["mlx_bytes"]}}},
         {"warnings", warnings},
         {"config", config_.source.string()},
         {"bind_host", config_.supervisor.bind_host},
         {"uptime_s", std::chrono::duration_cast<std::chrono::seconds>(now() - started_).count()}});
}

awaitable<bool> Fleet::replace_worker(int port, const std::string& handle,
                                      const std::string& profile) {
    auto& rt = runtime(port);
    if (is_running(rt.state)) {
        stop_worker(rt, "replacing '" + rt.handle + "' with '" + handle + "'");
        if (!co_await wait_stopped(port, now() + stop_wait(config_))) co_return false;
    }
    auto& fresh = runtime(port);
    fresh.handle = handle;
    fresh.profile = profile;
    fresh.policy.reset();
    fresh.last_failure.clear();
    // A start that fails is retried like any failure at start (or, for ensembled's own
    // shortage, without counting against the port): the port stays assigned and comes up.
    start_or_retry(fresh);
    const bool ready = co_await wait_settled(port, now() + kLoadTimeout);
    co_return ready;
}

awaitable<json> Fleet::load(int port, const std::string& handle, const std::string& profile) {
    if (config_.find_model(handle) == nullptr) {
        co_return failure("unknown_model", "unknown model '" + handle +
                                               "'; the config defines: " + known_models(config_));
    }
    if (auto* rt = find(port); rt != nullptr && is_running(rt->state)) {
        if (rt->handle == handle) co_return protocol::ok_reply(port_json(*rt));
        // Truthful about a port that is assigned but not serving (a load failing in a loop).
        const auto what = rt->state == PortState::ready
                              ? "already serves '" + rt->handle + "'"
                              : "is assigned '" + rt->handle + "' (" + to_string(rt->state) +
                                    (rt->last_failure.empty() ? "" : ": " + rt->last_failure) + ")";
        co_return failure("port_busy", "port " + std::to_string(port) + " " + what +
                                           "; use 'ensemble swap " + std::to_string(port) + " " +
                                           handle + "' or 'ensemble unload " +
                                           std::to_string(port) + "'");
    }
    if (auto allowed = check_port_allowed(config_.supervisor, port); !allowed)
        co_return protocol::error_reply(allowed.error());
    if (auto free = check_port_free(port); !free) co_return protocol::error_reply(free.error());
    // (named, not temporaries: GCC 12 miscompiles non-trivial temporaries in co_await)
    const std::map<int, std::string> starts{{port, handle}};
    const std::set<int> released;
    if (auto refused = co_await admit(starts, released, profile)) co_return *refused;
    if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok)
        co_return protocol::error_reply(ok.error());
    unassigned_.erase(port);
    const bool ready = co_await replace_worker(port, handle, profile);
    const auto& rt = runtime(port);
    if (!ready) {
        co_return failure("load_failed",
                          "'" + handle + "' did not become ready on port " + std::to_string(port) +
                              ": " +
                              (rt.last_failure.empty() ? to_string(rt.state) : rt.last_failure) +
                              " (see 'ensemble logs " + std::to_string(port) + "')");
    }
    co_return protocol::ok_reply(port_json(rt));
}

awaitable<json> Fleet::unload(int port) {
    auto* rt = find(port);
    auto assignments = store_->assignments();
    const bool assigned =
        assignments && std::any_of(assignments->begin(), assignments->end(),
                                   [&](const Assignment& a) { return a.port == port; });
    if (rt == nullptr && !assigned)
        co_return failure("not_loaded", "nothing is assigned to port " + std::to_string(port));
    if (auto ok = store_->remove_assignment(port); !ok) co_return protocol::error_reply(ok.error());
    unassigned_.insert(port);
    if (rt != nullptr) {
        stop_worker(*rt, "unloaded by the operator");
        co_await wait_stopped(port, now() + stop_wait(config_));
        ports_.erase(port);
    }
    event(port, "unload", "port " + std::to_string(port) + " unloaded");
    co_return protocol::ok_reply({{"port", port}, {"state", "stopped"}});
}

awaitable<json> Fleet::swap(int port, const std::string& handle) {
    auto* rt = find(port);
    if (rt == nullptr || !is_running(rt->state)) {
        co_return failure("not_loaded",
                          "nothing runs on port " + std::to_string(port) + "; use 'ensemble load'");
    }
    if (config_.find_model(handle) == nullptr) {
        co_return failure("unknown_model", "unknown model '" + handle +
                                               "'; the config defines: " + known_models(config_));
    }
    const std::string old_handle = rt->handle;
    const std::string profile = rt->profile;
    if (old_handle == handle) co_return protocol::ok_reply(port_json(*rt));
    const std::map<int, std::string> starts{{port, handle}};
    const std::set<int> released{port};
    if (auto refused = co_await admit(starts, released, profile)) co_return *refused;
    if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok)
        co_return protocol::error_reply(ok.error());
    unassigned_.erase(port);
    event(port, "swap", "'" + old_handle + "' -> '" + handle + "'");
    if (co_await replace_worker(port, handle, profile))
        co_return protocol::ok_reply(port_json(runtime(port)));

    // The new model failed: bring the old one back, and say why.
    const std::string why = runtime(port).last_failure.empty() ? to_string(runtime(port).state)
                                                               : runtime(port).last_failure;
    event(port, "swap_rollback",
          "'" + handle + "' failed (" + why + "); restoring '" + old_handle + "'");
    if (auto ok = store_->set_assignment({port, old_handle, profile, 0}); !ok)
        co_return protocol::error_reply(ok.error());
    const bool restored = co_await replace_worker(port, old_handle, profile);
    co_return failure(
        "swap_failed",
        "swap of port " + std::to_string(port) + " to '" + handle + "' failed: " + why + "; " +
            (restored
                 ? "'" + old_handle + "' is serving again"
                 : "restoring '" + old_handle + "' also failed: " + runtime(port).last_failure));
}

awaitable<json> Fleet::restart(int port) {
    auto* rt = find(port);
    if (rt == nullptr)
        co_return failure("not_loaded", "nothing is assigned to port " + std::to_string(port));
    const std::string handle = rt->handle;
    const std::string profile = rt->profile;
    if (rt->state == PortState::failed || rt->state == PortState::stopped) {
        // Not holding memory now: it must fit again, like a load.
        const std::map<int, std::string> starts{{port, handle}};
        const std::set<int> released{port};
        if (auto refused = co_await admit(starts, released, profile)) co_return *refused;
        // An evicted port is unassigned: restarting it is asking for it back.
        if (auto ok = store_->set_assignment({port, handle, profile, 0}); !ok)
            co_return protocol::error_reply(ok.error());
    }
    event(port, "restart", "restart requested by the operator");
    if (!co_await replace_worker(port, handle, profile)) {
        co_return failure("restart_failed",
                          "port " + std::to_string(port) +
                              " did not become ready: " + runtime(port).last_failure);
    }
    co_return protocol::ok_reply(port_json(runtime(port)));
}

awaitable<json> Fleet::profile_load(const std::string& name) {
    const auto it = config_.profiles.find(name);
    if (it == config_.profiles.end()) {
        std::string known;
        for (const auto& [n, _] : config_.profiles)
            known += (known.empty() ? "" : ", ") + n;
        co_return failure("unknown_profile",
                          "unknown profile '" + name + "'; the config defines: " + known);
    }
    const Profile profile = it->second;
    // All or nothing: every port must be free (or already ours) before anything changes.
    for (const auto& [port, a] : profile.ports) {
        if (auto free = check_port_free(port); !free) co_return protocol::error_reply(free.error());
    }
    // Within the memory budget once the ports it changes or drops stop (all or nothing).
    std::map<int, std::string> starts;
    std::set<int> released;
    for (const auto& [port, rt] : ports_) {
        const auto wanted = profile.ports.find(port);
        if (wanted == profile.ports.end() || wanted->second.model != rt->handle)
            released.insert(port);
    }
    for (const auto& [port, a] : profile.ports) {
        const auto* rt = find(port);
        if (rt == nullptr || rt->handle != a.model || !is_running(rt->state))
            starts[port] = a.model;
    }
    if (auto refused = co_await admit(starts, released, name)) co_return *refused;
    std::vector<Assignment> desired;
    for (const auto& [port, a] : profile.ports)
        desired.push_back({port, a.model, name, 0});
    if (auto ok = store_->replace_assignments(desired); !ok)
        co_return protocol::error_reply(ok.error());
    for (const auto& a : desired)
        unassigned_.erase(a.port);
    log_unsaved(store_->set_meta("active_profile", name), "the active profile");
    event(0, "profile", "loading profile '" + name + "'");
    std::vector<int> stale;
    for (const auto& [port, rt] : ports_) {
        if (!profile.ports.count(port)) stale.push_back(port);
    }
    for (int port : stale)
        co_await unload(port);
    json results = json::array();
    bool all_ready = true;
    for (const auto& [port, a] : profile.ports) {
        auto* rt = find(port);
        bool ready = rt != nullptr && rt->handle == a.model && rt->state == PortState::ready;
        if (ready) {
            rt->profile = name;
        } else {
            const int p = port;
            const std::string model = a.model;
            ready = co_await replace_worker(p, model, name);
        }
        all_ready = all_ready && ready;
        results.push_back(port_json(runtime(port)));
    }
    if (!all_ready) {
        co_return json{
            {"ok", false},
            {"error",
             {{"code", "profile_incomplete"},
              {"message", "profile '" + name + "' loaded, but not every port is ready"}}},
            {"result", {{"ports", results}}}};
    }
    co_return protocol::ok_reply({{"profile", name}, {"ports", results}});
}

awaitable<json> Fleet::profile_unload() {
    std::vector<int> ports;
    for (const auto& [port, _] : ports_)
        ports.push_back(port);
    if (auto ok = store_->replace_assignments({}); !ok) co_return protocol::error_reply(ok.error());
    log_unsaved(store_->set_meta("active_profile", ""), "that no profile is active");
    for (int port : ports)
        co_await unload(port);
    co_return protocol::ok_reply({{"stopped", ports}});
}

json Fleet::profile_list() {
    const auto active = store_->meta("active_profile");
    json list = json::array();
    for (const auto& [name, profile] : config_.profiles) {
        json ports = json::object();
        for (const auto& [port, a] : profile.ports)
            ports[std::to_string(port)] = a.model;
        list.push_back({{"name", name}, {"ports", ports}, {"active", active && *active == name}});
    }
    return protocol::ok_reply({{"profiles", list}});
}

json Fleet::logs(int port, int lines) const {
    const auto files = port_files_in(config_.supervisor.state_dir, port);
    const auto& worker = files.worker_log;
    const auto& engine = files.engine_log;
    if (!std::filesystem::exists(engine) && !std::filesystem::exists(worker)) {
        return failure("no_logs", "no logs for port " + std::to_string(port) + " in " +
                                      engine.parent_path().string());
    }
    return protocol::ok_reply({{"engine_log", engine.string()},
                               {"worker_log", worker.string()},
                               {"engine", tail_lines(engine, lines)},
                               {"worker", tail_lines(worker, lines)}});
}

json Fleet::events(int lines) {
    auto all = store_->events_after(0, lines);
    if (!all) return protocol::error_reply(all.error());
    json list = json::array();
    for (const auto& e : *all) {
        list.push_back({{"id", e.id},
                        {"at_ms", e.at_ms},
                        {"port", e.port},
                        {"kind", e.kind},
                        {"message", e.message}});
    }
    return protocol::ok_reply({{"events", list}});
}

json Fleet::reload() {
    auto loaded = load_config(config_.source);
    if (!loaded.config) {
        std::string text;
        for (const auto& i : loaded.issues)
            text += "\n  " + i.to_string();
        return failure("bad_config", "the config has errors; keeping the running one:" + text);
    }
    // Where ensembled keeps its state and sockets is fixed for its life (its sockets are open
    // there, its workers log there).
    for (const auto& [name, before, after] :
         {std::tuple{"state_dir", config_.supervisor.state_dir,
                     loaded.config->supervisor.state_dir},
          std::tuple{"run_dir", config_.supervisor.run_dir, loaded.config->supervisor.run_dir}}) {
        if (before != after) {
            return failure("restart_needed", std::string("the new config moves ") + name +
                                                 " from " + before.string() + " to " +
                                                 after.string() +
                                                 "; keeping the running config. Restart "
                                                 "ensembled to move it");
        }
    }
    // A model a port is assigned must stay defined: its next restart would fail, leaving the
    // port down. Such a config is refused, naming the ports, until they are swapped or unloaded.
    std::string orphaned;
    const auto assigned = store_->assignments();
    if (!assigned) return protocol::error_reply(assigned.error());
    for (const auto& a : *assigned) {
        if (loaded.config->find_model(a.handle) == nullptr)
            orphaned +=
                (orphaned.empty() ? "" : ", ") + std::to_string(a.port) + " ('" + a.handle + "')";
    }
    if (!orphaned.empty()) {
        return failure("model_in_use",
                       "the new config no longer defines the model of port(s) " + orphaned +
                           "; keeping the running config. Swap or unload those ports first "
                           "(ensemble unload PORT), then reload");
    }
    // A port whose worker would now start differently from how it runs is reported, not
    // silently restarted (a change undone by the next reload is no change).
    json changed = json::array();
    for (const auto& [port, rt] : ports_) {
        if (!is_running(rt->state)) continue;  // its next start takes the new config anyway
        const auto* new_profile = loaded.config->profiles.count(rt->profile)
                                      ? &loaded.config->profiles.at(rt->profile)
                                      : nullptr;
        const PortAssignment* new_overrides =
            new_profile && new_profile->ports.count(port) ? &new_profile->ports.at(port) : nullptr;
        const auto after = launcher_->plan(*loaded.config, port, rt->handle, new_overrides);
        if (!after || after->command != rt->command) changed.push_back(port);
    }
    config_ = std::move(*loaded.config);
    event(0, "reload",
          "configuration reloaded; " + std::to_string(changed.size()) + " port(s) changed");
    return protocol::ok_reply(
        {{"changed_ports", changed},
         {"hint", changed.empty() ? "" : "run 'ensemble restart PORT' to apply a change"}});
}

awaitable<json> Fleet::handle(const protocol::ControlRequest& r) {
    using protocol::Verb;
    const int port = r.port.value_or(0);
    // Commands that change the fleet run one at a time, in arrival order: the waiting ones
    // sleep in order and are woken when the running one ends.
    struct Running {
        Fleet& fleet;
        explicit Running(Fleet& f) : fleet(f) { fleet.command_running_ = true; }
        ~Running() {
            fleet.command_running_ = false;
            fleet.wake();
        }
    };
    std::optional<Running> running;
    if (protocol::info(r.verb).changes_the_fleet) {
        while (command_running_) {
            const auto until = now() + std::chrono::seconds(1);
            co_await time_->sleep_until(until);
        }
        running.emplace(*this);
    }
    const std::string no_profile;
    switch (r.verb) {
        case Verb::status:
            co_return status();
        case Verb::profile_list:
            co_return profile_list();
        case Verb::logs:
            co_return logs(port, r.lines);
        case Verb::events:
            co_return events(r.lines);
        case Verb::budget:
            co_return budget();
        case Verb::load:
            co_return co_await load(port, r.model, no_profile);
        case Verb::unload:
            co_return co_await unload(port);
        case Verb::swap:
            co_return co_await swap(port, r.model);
        case Verb::restart:
            co_return co_await restart(port);
        case Verb::profile_load:
            co_return co_await profile_load(r.profile);
        case Verb::profile_unload:
            co_return co_await profile_unload();
        case Verb::reload:
            co_return reload();
    }
    co_return failure("unknown_verb", "unknown request");  // not reached: every verb is above
}

}  // namespace ensemble
