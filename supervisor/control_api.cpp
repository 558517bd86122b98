#include "supervisor/control_api.h"

#include <spdlog/spdlog.h>

namespace ensemble {

namespace {

using nlohmann::json;

const char* evict_name(EvictPolicy evict) {
    return evict == EvictPolicy::idle ? "idle" : "never";
}

json reply(const Result<PortReport>& port) {
    return port ? protocol::ok_reply(to_json(*port)) : protocol::error_reply(port.error());
}

json to_json(const ProfileLoad& loaded) {
    json ports = json::array();
    for (const auto& p : loaded.ports)
        ports.push_back(to_json(p));
    if (!loaded.complete) {
        // Not every port came up: a failure, with what each port is now.
        auto reply = protocol::error_reply(
            Error{"profile_incomplete",
                  "profile '" + loaded.name + "' loaded, but not every port is ready"});
        reply["result"] = {{"ports", ports}};
        return reply;
    }
    return protocol::ok_reply({{"profile", loaded.name}, {"ports", ports}});
}

json to_json(const std::vector<ProfileListing>& profiles) {
    json list = json::array();
    for (const auto& profile : profiles) {
        json ports = json::object();
        for (const auto& [port, model] : profile.ports)
            ports[std::to_string(port)] = model;
        list.push_back({{"name", profile.name}, {"ports", ports}, {"active", profile.active}});
    }
    return protocol::ok_reply({{"profiles", list}});
}

json to_json(const PortLogs& logs) {
    return protocol::ok_reply({{"engine_log", logs.engine_log.string()},
                               {"worker_log", logs.worker_log.string()},
                               {"engine", logs.engine},
                               {"worker", logs.worker}});
}

json events_reply(const std::vector<Event>& events) {
    return protocol::ok_reply({{"events", to_json(events)}});
}

json reload_reply(const std::vector<int>& changed) {
    return protocol::ok_reply(
        {{"changed_ports", changed},
         {"hint", changed.empty() ? "" : "run 'ensemble restart PORT' to apply a change"}});
}

// A value, or the error reply.
template <typename T, typename Make>
json reply_with(const Result<T>& result, Make make) {
    return result ? make(*result) : protocol::error_reply(result.error());
}

}  // namespace

json to_json(const LoadProgress& l) {
    json j = {{"fraction", l.fraction},
              {"done_bytes", l.done_bytes},
              {"total_bytes", l.total_bytes},
              {"measure", l.measure}};
    if (l.eta_s) j["eta_s"] = *l.eta_s;
    return j;
}

json to_json(const PortReport& r) {
    const auto& p = r.port;
    json j = {{"port", p.port},
              {"model", p.handle},
              {"profile", p.profile},
              {"state", to_string(p.state)},
              {"pid", p.pid},
              {"engine_pid", p.stats.engine_pid},
              {"engine_state", p.stats.state},
              {"restarts", p.restarts},
              {"engine_restarts", p.stats.engine_restarts},
              {"engine_last_exit", p.stats.engine_last_exit},
              {"memory_bytes", p.stats.memory_bytes},
              {"requests", p.stats.requests},
              {"tokens", p.stats.tokens},
              {"tokens_per_s", p.tokens_per_s},
              {"last_busy_tokens_per_s", p.last_busy_tokens_per_s},
              {"queue_depth", p.stats.queue_depth},
              {"uptime_s", r.uptime_s},
              {"last_failure", p.last_failure},
              {"priority", r.policy.priority},
              {"evict", evict_name(r.policy.evict)}};
    if (p.state == PortState::failed || p.state == PortState::backoff)
        j["last_log_lines"] = p.last_log_lines;
    if (p.load) j["load_progress"] = to_json(*p.load);
    if (r.incoming) {
        j["incoming"] = {{"model", r.incoming->model}, {"state", to_string(r.incoming->state)}};
        if (r.incoming->load) j["incoming"]["load_progress"] = to_json(*r.incoming->load);
    }
    if (p.estimate) {
        j["memory_estimate_bytes"] = p.estimate->total();
        j["memory_estimate"] = {{"source", p.estimate->source},
                                {"weights", p.estimate->weights},
                                {"kv_cache", p.estimate->kv_cache},
                                {"compute", p.estimate->compute},
                                {"overhead", p.estimate->overhead}};
    } else {
        j["memory_estimate_bytes"] = 0;
        j["memory_estimate_error"] = p.estimate_error;
    }
    if (p.upstream) {
        // A chained model's worker: what it was started in front of, and where (a reload may
        // have named another upstream since: that applies at its next start).
        j["upstream"] = {
            {"model", p.upstream->handle}, {"port", p.upstream->port}, {"url", p.upstream->url}};
    } else if (r.model && !r.model->upstream.empty()) {
        j["upstream"] = {{"model", r.model->upstream}};  // not started in front of it yet
    }
    if (r.model) {
        j["memory_configured_bytes"] = r.model->memory_bytes.value_or(0);
        j["aliases"] = r.model->aliases;
        j["accept_any_model"] = r.model->accept_any_model;
        j["model_path"] = r.model->path;
        j["engine"] = r.model->engine;
    }
    return j;
}

json to_json(const BudgetReport& b) {
    json ports = json::array();
    for (const auto& [h, share] : b.ports) {
        ports.push_back({{"port", h.port},
                         {"model", h.model},
                         {"estimate_bytes", h.estimate},
                         {"measured_bytes", h.measured},
                         {"charged_bytes", h.charge()},
                         {"share", share},
                         {"priority", h.priority},
                         {"evict", h.evictable ? "idle" : "never"},
                         {"idle", h.idle}});
    }
    return {{"budget", b.budget},
            {"budget_bytes", b.budget_bytes},
            {"physical_bytes", b.physical_bytes},
            {"budgetable_bytes", b.budgetable_bytes},
            {"reserved_bytes", b.reserved_bytes},
            {"measured_bytes", b.measured_bytes},
            {"free_bytes", b.free_bytes},
            {"over_budget", b.over_budget},
            {"ports", ports},
            {"gpu_wired_limit",
             {{"applies", b.wired.applies},
              {"bytes", b.wired.bytes},
              {"source", b.wired.source},
              {"configured_bytes", b.wired.configured_bytes},
              {"mlx_bytes", b.wired.mlx_bytes},
              {"warnings", b.wired.warnings}}}};
}

json to_json(const Event& e) {
    return {{"id", e.id},
            {"at_ms", e.at_ms},
            {"port", e.port},
            {"kind", e.kind},
            {"message", e.message}};
}

json to_json(const std::vector<Event>& events) {
    json list = json::array();
    for (const auto& e : events)
        list.push_back(to_json(e));
    return list;
}

json to_json(const FleetStatus& s) {
    json ports = json::array();
    for (const auto& p : s.ports)
        ports.push_back(to_json(p));
    const auto& b = s.budget;
    json front_door;  // null: the config has none
    if (const auto& door = s.front_door) {
        front_door = {{"listen", door->listen},     {"state", to_string(door->state)},
                      {"pid", door->pid},           {"uptime_s", door->uptime_s},
                      {"restarts", door->restarts}, {"loads_asked", door->loads_asked}};
    }
    return {{"ports", ports},
            {"front_door", front_door},
            {"memory",
             {{"budget_bytes", b.budget_bytes},
              {"reserved_bytes", b.reserved_bytes},
              {"measured_bytes", b.measured_bytes},
              {"free_bytes", b.free_bytes},
              {"budgetable_bytes", b.budgetable_bytes},
              {"over_budget", b.over_budget},
              {"gpu_wired_limit_bytes", b.wired.bytes},
              {"mlx_bytes", b.wired.mlx_bytes}}},
            {"warnings", s.warnings},
            {"config", s.config.string()},
            {"bind_host", s.bind_host},
            {"uptime_s", s.uptime_s}};
}

awaitable<void> ControlApi::carry_on(protocol::ControlRequest request) {
    request.wait = true;
    const auto reply = co_await handle(request);
    if (!reply.value("ok", false)) {
        // Nobody waits for the reply: the event log is where the failure is seen.
        fleet_.note_failure(request.port.value_or(0), protocol::info(request.verb).name,
                            reply["error"].value("message", "failed"));
    }
}

Status ControlApi::check_before_accepting(const protocol::ControlRequest& r) const {
    const auto& config = fleet_.config();
    if (!r.model.empty() && config.find_model(r.model) == nullptr)
        return Error{"unknown_model", "unknown model '" + r.model + "'; see 'ensemble check'"};
    if (!r.profile.empty() && !config.profiles.count(r.profile))
        return Error{"unknown_profile",
                     "unknown profile '" + r.profile + "'; see 'ensemble profile list'"};
    if (const auto profile = config.profiles.find(r.profile);
        r.verb == protocol::Verb::profile_load && profile != config.profiles.end()) {
        for (const auto& [port, _] : profile->second.ports) {
            if (auto kept = check_port_not_reserved(config.supervisor, port, r.force); !kept)
                return kept;
        }
    }
    if (!r.port) return Ok{};
    if (auto allowed = check_port_allowed(config.supervisor, *r.port); !allowed) return allowed;
    if (r.verb == protocol::Verb::load)
        return check_port_not_reserved(config.supervisor, *r.port, r.force);
    return Ok{};
}

awaitable<json> ControlApi::handle(const protocol::ControlRequest& r) {
    using protocol::Verb;
    if (!r.wait) {
        // Accepted now, unless it is plainly wrong; it runs in its turn like any other, and
        // `status` and the events say how it goes.
        if (auto ok = check_before_accepting(r); !ok) co_return protocol::error_reply(ok.error());
        const auto executor = co_await asio::this_coro::executor;
        asio::co_spawn(executor, carry_on(r), asio::detached);
        json accepted = {{"accepted", true}, {"verb", protocol::info(r.verb).name}};
        if (r.port) accepted["port"] = *r.port;
        if (!r.model.empty()) accepted["model"] = r.model;
        if (!r.profile.empty()) accepted["profile"] = r.profile;
        co_return protocol::ok_reply(accepted);
    }
    const int port = r.port.value_or(0);
    // Held from the fleet's wait_turn() until the reply is made, however the verb ends.
    struct Turn {
        Turn(Fleet& f, std::shared_ptr<bool> a) : fleet(f), api_alive(std::move(a)) {}
        Turn(const Turn&) = delete;
        Turn& operator=(const Turn&) = delete;
        ~Turn() {
            if (*api_alive) fleet.end_turn();
        }
        Fleet& fleet;
        std::shared_ptr<bool> api_alive;
    };
    std::optional<Turn> turn;
    if (protocol::info(r.verb).changes_the_fleet) {
        co_await fleet_.wait_turn();
        turn.emplace(fleet_, alive_);
    }
    const std::string no_profile;
    switch (r.verb) {
        case Verb::status:
            co_return protocol::ok_reply(to_json(fleet_.status()));
        case Verb::profile_list:
            co_return to_json(fleet_.profiles());
        case Verb::logs:
            co_return reply_with(fleet_.logs(port, r.lines),
                                 [](const PortLogs& logs) { return to_json(logs); });
        case Verb::events:
            co_return reply_with(fleet_.events(r.lines), events_reply);
        case Verb::budget:
            co_return protocol::ok_reply(to_json(fleet_.budget()));
        case Verb::load: {
            const auto loaded = co_await fleet_.load(port, r.model, no_profile, r.force);
            co_return reply(loaded);
        }
        case Verb::unload: {
            const auto unloaded = co_await fleet_.unload(port);
            co_return unloaded ? protocol::ok_reply({{"port", port}, {"state", "stopped"}})
                               : protocol::error_reply(unloaded.error());
        }
        case Verb::swap: {
            const auto swapped = co_await fleet_.swap(port, r.model);
            co_return reply(swapped);
        }
        case Verb::restart: {
            const auto restarted = co_await fleet_.restart(port);
            co_return reply(restarted);
        }
        case Verb::profile_load: {
            const auto loaded = co_await fleet_.profile_load(r.profile, r.force);
            co_return reply_with(loaded, [](const ProfileLoad& l) { return to_json(l); });
        }
        case Verb::profile_unload: {
            const auto stopped = co_await fleet_.profile_unload(r.profile);
            co_return reply_with(stopped, [](const std::vector<int>& ports) {
                return protocol::ok_reply({{"stopped", ports}});
            });
        }
        case Verb::reload:
            co_return reply_with(fleet_.reload(), reload_reply);
    }
    co_return protocol::error_reply(Error{"unknown_verb", "unknown request"});  // not reached
}

}  // namespace ensemble
