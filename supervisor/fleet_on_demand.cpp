// The front door's part of the fleet (supervisor.front_door): the routes it is sent, loads on
// demand on the pool of ports, and the unloading of idle on-demand loads. Every decision is made
// here, one command at a time, through the same admission as an operator's `load`.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "supervisor/fleet.h"

namespace ensemble {

bool Fleet::in_pool(int port) const {
    const auto& door = config_.supervisor.front_door;
    return door && door->ports.contains(port);
}

std::vector<protocol::Route> Fleet::routes() const {
    const auto now = this->now();
    const auto now_unix_s = time_->unix_ms() / 1000;
    std::vector<protocol::Route> routes;
    for (const auto& [handle, model] : config_.models) {
        protocol::Route route;
        route.handle = handle;
        route.aliases = model.aliases;
        route.on_demand = config_.loads_on_demand(model);
        route.path = model.path;
        if (const auto* engine = config_.engine_of(model)) {
            route.context = context_per_request(engine->preset, model.context, model.parallel);
            route.tools = serves_tools(engine->preset);
        }
        // Where it is served: a ready port first, else the lowest one bringing it up.
        const Port* best = nullptr;
        for (const auto& [number, port] : ports_) {
            const auto& rt = port->snapshot();
            if (rt.handle != handle || rt.state == PortState::stopped || rt.stop_requested)
                continue;
            if (best == nullptr ||
                (rt.state == PortState::ready && best->snapshot().state != PortState::ready))
                best = port.get();
        }
        if (best != nullptr) {
            const auto& rt = best->snapshot();
            route.port = rt.port;
            route.state = to_string(rt.state);
            route.memory_bytes = rt.stats.memory_bytes;
            if (in_pool(rt.port) && rt.state == PortState::ready) {
                if (const auto limit = idle_limit(*best)) {
                    const auto idle_until = idle_since(*best) + *limit;
                    route.expires_unix =
                        now_unix_s +
                        std::chrono::duration_cast<std::chrono::seconds>(idle_until - now).count();
                }
            }
            if (rt.load) {
                route.load_permille = static_cast<int>(std::lround(rt.load->fraction * 1000));
                route.load_measure = rt.load->measure;
            }
        }
        routes.push_back(std::move(route));
    }
    return routes;
}

awaitable<Result<PortReport>> Fleet::load_on_demand(const std::string& handle) {
    const auto* model = config_.find_model(handle);
    if (model == nullptr) {
        co_return Error{"unknown_model", "unknown model '" + handle +
                                             "'; the config defines: " + config_.model_names()};
    }
    if (!config_.loads_on_demand(*model)) {
        co_return Error{"not_on_demand", "'" + handle +
                                             "' is not loaded on demand: set 'on_demand: true' "
                                             "for it, or load it ('ensemble load PORT " +
                                             handle + "')"};
    }
    if (shutting_down_) co_return shutting_down_error(0, handle);
    // Served, or on its way (a concurrent demand, an operator's load): nothing to do; the
    // routes show it. A port where it failed says so rather than being tried again and again.
    for (const auto& [number, port] : ports_) {
        const auto& rt = port->snapshot();
        if (rt.handle != handle || rt.stop_requested) continue;
        if (rt.state == PortState::failed) {
            co_return Error{"load_failed",
                            "'" + handle + "' failed on port " + std::to_string(number) + ": " +
                                rt.last_failure + " (see 'ensemble logs " + std::to_string(number) +
                                "'; 'ensemble unload " + std::to_string(number) + "' clears it)"};
        }
        if (is_running(rt.state)) co_return report(*port);
    }
    const auto& pool = config_.supervisor.front_door->ports;
    std::optional<int> free_port;
    for (const int number : pool) {
        const auto* port = find(number);
        if ((port == nullptr || !is_running(port->state())) && !has_side_run(number) &&
            check_port_free(number)) {
            free_port = number;
            break;
        }
    }
    if (!free_port) {
        // Every pool port serves a model: the one idle longest makes room, if one is idle —
        // one a client asked to keep for ever (keep_alive -1) only when no other is.
        const auto now = this->now();
        const Port* oldest = nullptr;
        const auto order = [this](const Port& port) {
            const auto* kept = kept_alive(port);
            return std::make_pair(kept != nullptr && !kept->limit, idle_since(port));
        };
        for (const int number : pool) {
            const auto* port = find(number);
            if (port == nullptr) continue;
            const auto& rt = port->snapshot();
            const bool idle = rt.state == PortState::ready && !rt.stats.busy() &&
                              now - idle_since(*port) >= config_.supervisor.memory.idle_after;
            if (idle && (oldest == nullptr || order(*port) < order(*oldest))) oldest = port;
        }
        if (oldest == nullptr) {
            const auto idle_s = std::chrono::duration_cast<std::chrono::seconds>(
                                    config_.supervisor.memory.idle_after)
                                    .count();
            co_return Error{"pool_full", "all " + std::to_string(pool.size()) +
                                             " of front_door.ports serve models used in the "
                                             "last " +
                                             std::to_string(idle_s) +
                                             " s (evict_idle_after); retry shortly, or add "
                                             "ports to front_door.ports"};
        }
        const int victim = oldest->number();
        const std::string victim_handle = oldest->snapshot().handle;
        // Admitted first, as if the victim had gone: refused, it stays.
        const std::map<int, std::string> starts{{victim, handle}};
        const std::set<int> released{victim};
        const std::string no_profile;
        if (auto admitted = co_await admit(starts, released, no_profile); !admitted)
            co_return admitted.error();
        const auto reason = "'" + victim_handle + "' unloaded to make room for '" + handle +
                            "' on the front door's ports";
        event(victim, "evict", reason);
        if (auto unloaded = co_await unload(victim, reason); !unloaded) co_return unloaded.error();
        free_port = victim;
    }
    event(*free_port, "on_demand", "loading '" + handle + "' for the front door");
    const std::string no_profile;
    // (forced: a pool port is the front door's to load on)
    auto loaded = co_await load(*free_port, handle, no_profile, /*force=*/true);
    co_return loaded;
}

bool Fleet::keep_alive(const protocol::KeepAlive& keep_alive) {
    const auto* port = find(keep_alive.port);
    // For this load only: not one being unloaded (a request that ended during its drain), not
    // the next load of the same model there.
    if (!in_pool(keep_alive.port) || port == nullptr || !is_running(port->state()) ||
        port->snapshot().stop_requested || port->snapshot().handle != keep_alive.model) {
        spdlog::debug("port {}: keep_alive for '{}' ignored: not an on-demand load of it",
                      keep_alive.port, keep_alive.model);
        return false;
    }
    const auto what = "the keep_alive of port " + std::to_string(keep_alive.port);
    if (keep_alive.seconds == protocol::KeepAlive::kDefault) {
        log_unsaved(store_->remove_kept_alive(keep_alive.port), what);
        return kept_alive_.erase(keep_alive.port) > 0;
    }
    KeptAlive kept{keep_alive.model, port->attempt(), std::nullopt, now()};
    if (keep_alive.seconds != protocol::KeepAlive::kForever)
        kept.limit = std::chrono::seconds(keep_alive.seconds);
    const auto* before = kept_alive(*port);
    const bool changed = before == nullptr || before->limit != kept.limit;
    kept_alive_[keep_alive.port] = kept;
    // Kept for the worker that serves this load, should ensembled restart while it runs on
    // (where its idle time counts from the restart). Written when it changes, not for every
    // request that repeats it: each write is an fsync.
    if (changed) {
        log_unsaved(store_->save_kept_alive({keep_alive.port, port->worker_id(), keep_alive.model,
                                             keep_alive.seconds, time_->unix_ms()}),
                    what);
    }
    return true;
}

void Fleet::forget_kept_alive(int port) {
    kept_alive_.erase(port);
    log_unsaved(store_->remove_kept_alive(port),
                "that port " + std::to_string(port) + "'s keep_alive is gone");
}

void Fleet::restore_kept_alive() {
    auto records = store_->kept_alive();
    if (!records) {
        spdlog::warn("{}; loads on demand go back to front_door.evict_idle_after",
                     records.error().message);
        return;
    }
    const auto unix_now = time_->unix_ms();
    for (const auto& k : *records) {
        const auto* port = find(k.port);
        // Only for the very worker it was given for, adopted again: a new load starts afresh.
        const bool same_load = port != nullptr && in_pool(k.port) && !k.worker_id.empty() &&
                               port->worker_id() == k.worker_id &&
                               port->snapshot().handle == k.handle;
        if (!same_load) {
            forget_kept_alive(k.port);
            continue;
        }
        const auto given_ago =
            std::chrono::milliseconds(std::max<std::int64_t>(0, unix_now - k.since_ms));
        KeptAlive kept{k.handle, port->attempt(), std::nullopt, now() - given_ago};
        if (k.limit_s != protocol::KeepAlive::kForever)
            kept.limit = std::chrono::seconds(k.limit_s);
        kept_alive_[k.port] = kept;
    }
}

const Fleet::KeptAlive* Fleet::kept_alive(const Port& port) const {
    const auto kept = kept_alive_.find(port.number());
    return kept != kept_alive_.end() && kept->second.handle == port.snapshot().handle &&
                   kept->second.attempt == port.attempt()
               ? &kept->second
               : nullptr;
}

std::optional<Fleet::Clock::duration> Fleet::idle_limit(const Port& port) const {
    if (const auto* kept = kept_alive(port)) return kept->limit;
    return config_.supervisor.front_door->evict_idle_after;
}

Fleet::Clock::time_point Fleet::idle_since(const Port& port) const {
    const auto& rt = port.snapshot();
    const auto* kept = kept_alive(port);
    // (a keep_alive counts from the end of the request that gave it, as in Ollama)
    return std::max({rt.last_used, rt.started, kept ? kept->since : Clock::time_point{}});
}

bool Fleet::idle_expired(const Port& port, Clock::time_point now) const {
    const auto& rt = port.snapshot();
    const auto limit = idle_limit(port);
    return rt.state == PortState::ready && !rt.stop_requested && !rt.stats.busy() && limit &&
           now - idle_since(port) >= *limit;
}

void Fleet::unload_idle_on_demand(Clock::time_point now) {
    const auto& door = config_.supervisor.front_door;
    if (!door || command_running_ || shutting_down_) return;
    for (const int number : door->ports) {
        const auto* port = find(number);
        if (port == nullptr || !idle_expired(*port, now)) continue;
        asio::co_spawn(io_, unload_idle(number, port->attempt()), asio::detached);
        return;  // one at a time: the next tick looks again
    }
}

awaitable<void> Fleet::unload_idle(int number, std::uint64_t attempt) {
    co_await wait_turn();
    // Looked at again with the turn held: a request may have come, or the port changed.
    const auto* port = find(number);
    if (port != nullptr && port->attempt() == attempt && idle_expired(*port, now())) {
        const auto& rt = port->snapshot();
        const auto idle_s =
            std::chrono::duration_cast<std::chrono::seconds>(now() - idle_since(*port)).count();
        const auto* kept = kept_alive(*port);
        const auto limit_s =
            std::chrono::duration_cast<std::chrono::seconds>(*idle_limit(*port)).count();
        event(number, "idle_unload",
              "'" + rt.handle + "' served nothing for " + std::to_string(idle_s) + " s (" +
                  (kept ? "keep_alive " : "front_door.evict_idle_after ") +
                  std::to_string(limit_s) + " s); unloaded");
        const auto reason = "idle for " + std::to_string(idle_s) + " s, unloaded by the front door";
        if (auto unloaded = co_await unload(number, reason); !unloaded)
            spdlog::warn("port {}: idle unload failed: {}", number, unloaded.error().message);
    }
    end_turn();
}

}  // namespace ensemble
