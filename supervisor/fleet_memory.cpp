// The fleet under the global memory budget: estimates per port, admission of loads, swaps and
// profiles (with eviction of idle ports), the measured total at runtime, and `ensemble budget`.
#include <spdlog/spdlog.h>

#include "supervisor/fleet.h"
#include "supervisor/unified_memory.h"

namespace ensemble {

namespace {

using nlohmann::json;

// After stopping a port for being over budget, wait this long for the measurement to follow
// before stopping another.
constexpr auto kEnforceSettle = std::chrono::seconds(5);

// A port in backoff holds no memory now but will in a moment: it is charged too.
bool holds_memory(PortState state) {
    return is_running(state) || state == PortState::backoff;
}

std::int64_t steady_ms(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

}  // namespace

std::optional<std::uint64_t> Fleet::budget_bytes() const {
    if (config_.supervisor.memory_budget.empty()) return std::nullopt;
    return resolve_budget(config_.supervisor.memory_budget, budgetable_memory());
}

const PortAssignment* Fleet::assignment_in(const std::string& profile, int port,
                                           const std::string& handle) const {
    return find_assignment(config_, profile, port, handle);
}

Result<MemoryEstimate> Fleet::estimate_for(int port, const std::string& handle,
                                           const std::string& profile) const {
    return estimate_assignment(config_, port, handle, profile);
}

PortPolicy Fleet::policy_for(int port, const std::string& handle,
                             const std::string& profile) const {
    PortPolicy policy;
    if (const auto* model = config_.find_model(handle)) {
        policy.priority = model->priority;
        policy.evict = model->evict;
    }
    if (const auto p = config_.profiles.find(profile); p != config_.profiles.end()) {
        policy.priority = p->second.priority.value_or(policy.priority);
        policy.evict = p->second.evict.value_or(policy.evict);
    }
    if (const auto* a = assignment_in(profile, port, handle)) {
        policy.priority = a->priority.value_or(policy.priority);
        policy.evict = a->evict.value_or(policy.evict);
    }
    return policy;
}

void Fleet::note_activity(PortRuntime& rt, Clock::time_point now) {
    if (rt.last_used == Clock::time_point{} || rt.stats.requests != rt.last_requests ||
        rt.stats.queue_depth > 0) {
        rt.last_used = now;
    }
    rt.last_requests = rt.stats.requests;
}

std::vector<BudgetHolder> Fleet::budget_holders(Clock::time_point now) const {
    std::vector<BudgetHolder> holders;
    for (const auto& [port, rt] : ports_) {
        if (!holds_memory(rt->state) || rt->stop_requested) continue;
        const auto policy = policy_for(port, rt->handle, rt->profile);
        const auto last_used = std::max(rt->last_used, rt->started);
        holders.push_back(
            {port, rt->handle, rt->estimate ? rt->estimate->total() : 0, rt->stats.memory_bytes,
             policy.priority, policy.evict == EvictPolicy::idle,
             rt->stats.queue_depth == 0 && now - last_used >= config_.supervisor.memory.idle_after,
             steady_ms(last_used)});
    }
    return holders;
}

awaitable<std::optional<json>> Fleet::admit(const std::map<int, std::string>& starts,
                                            const std::set<int>& released,
                                            const std::string& profile) {
    const auto budget = budget_bytes();
    if (!budget || starts.empty()) co_return std::nullopt;
    std::vector<Placement> incoming;
    for (const auto& [port, handle] : starts) {
        auto estimate = estimate_for(port, handle, profile);
        if (!estimate) co_return protocol::error_reply(estimate.error());
        incoming.push_back(
            {port, handle, estimate->total(), policy_for(port, handle, profile).priority});
    }
    const auto now = this->now();
    const auto holders = budget_holders(now);
    const auto plan = plan_admission(*budget, holders, incoming, released);
    if (!plan.admitted) {
        event(starts.begin()->first, "budget_refused", plan.refusal);
        co_return protocol::error_reply(Error{"over_budget", plan.refusal});
    }
    for (int port : plan.evict) {
        auto* rt = find(port);
        if (rt == nullptr) continue;
        const auto idle_s =
            std::chrono::duration_cast<std::chrono::seconds>(now - rt->last_used).count();
        evict(*rt, "evicted to make room for " + starts.begin()->second + " (priority " +
                       std::to_string(policy_for(port, rt->handle, rt->profile).priority) +
                       ", idle for " + std::to_string(idle_s) + " s)");
        const int p = port;
        co_await wait_stopped(p, this->now() + std::chrono::seconds(50));
        // Forgotten only once stopped: a worker still stopping stays tracked (and is killed).
        if (const auto* gone = find(p); gone != nullptr && gone->state == PortState::stopped)
            ports_.erase(p);
    }
    co_return std::nullopt;
}

std::optional<std::string> Fleet::boot_refusal(const Profile& profile) const {
    const auto budget = budget_bytes();
    if (!budget) return std::nullopt;
    std::vector<Placement> incoming;
    for (const auto& [port, a] : profile.ports) {
        auto estimate = estimate_for(port, a.model, profile.name);
        if (!estimate) return estimate.error().message;
        incoming.push_back({port, a.model, estimate->total(), 0});
    }
    const auto plan = plan_admission(*budget, {}, incoming, {});
    if (plan.admitted) return std::nullopt;
    return plan.refusal;
}

void Fleet::evict(PortRuntime& rt, const std::string& reason) {
    // Unassigned first, so a restart of the supervisor does not bring it back over budget.
    log_unsaved(store_->remove_assignment(rt.port),
                "that port " + std::to_string(rt.port) + " is unassigned");
    event(rt.port, "evict", "'" + rt.handle + "' " + reason);
    rt.last_failure = "evicted: " + reason;
    stop_worker(rt, "evicted: " + reason);
}

void Fleet::check_budget(Clock::time_point now) {
    const auto budget = budget_bytes();
    if (!budget) return;
    std::uint64_t measured = 0;
    for (const auto& [port, rt] : ports_) {
        if (is_running(rt->state)) measured += rt->stats.memory_bytes;
    }
    if (measured <= *budget) {
        if (over_budget_)
            event(0, "within_budget",
                  "measured " + format_bytes(measured) + " is within the budget again");
        over_budget_ = false;
        return;
    }
    const auto message = "measured " + format_bytes(measured) + " is over the memory budget of " +
                         format_bytes(*budget) + " by " + format_bytes(measured - *budget);
    if (!over_budget_) {
        spdlog::warn("{}", message);
        event(0, "over_budget", message);
        over_budget_ = true;
    }
    if (!config_.supervisor.memory.stop_lowest_over_budget || now - last_enforced_ < kEnforceSettle)
        return;
    if (auto victim = over_budget_victim(budget_holders(now))) {
        last_enforced_ = now;
        evict(runtime(*victim), "stopped as " + message + " (over_budget: stop-lowest)");
    }
}

json Fleet::memory_json(const PortRuntime& rt) const {
    const auto policy = policy_for(rt.port, rt.handle, rt.profile);
    json j = {{"priority", policy.priority},
              {"evict", policy.evict == EvictPolicy::idle ? "idle" : "never"}};
    if (rt.estimate) {
        j["memory_estimate_bytes"] = rt.estimate->total();
        j["memory_estimate"] = {{"source", rt.estimate->source},
                                {"weights", rt.estimate->weights},
                                {"kv_cache", rt.estimate->kv_cache},
                                {"compute", rt.estimate->compute},
                                {"overhead", rt.estimate->overhead}};
    } else {
        j["memory_estimate_bytes"] = 0;
        j["memory_estimate_error"] = rt.estimate_error;
    }
    return j;
}

json Fleet::budget() const {
    const auto now = this->now();
    const auto budget = budget_bytes();
    std::uint64_t reserved = 0;
    std::uint64_t measured = 0;
    std::uint64_t charged = 0;
    std::uint64_t mlx = 0;
    json ports = json::array();
    for (const auto& h : budget_holders(now)) {
        reserved += h.estimate;
        measured += h.measured;
        charged += h.charge();
        if (is_mlx_model(config_, h.model)) mlx += h.charge();
        ports.push_back({{"port", h.port},
                         {"model", h.model},
                         {"estimate_bytes", h.estimate},
                         {"measured_bytes", h.measured},
                         {"charged_bytes", h.charge()},
                         {"share", budget && *budget > 0 ? static_cast<double>(h.charge()) /
                                                               static_cast<double>(*budget)
                                                         : 0.0},
                         {"priority", h.priority},
                         {"evict", h.evictable ? "idle" : "never"},
                         {"idle", h.idle}});
    }
    json result = {{"budget", config_.supervisor.memory_budget},
                   {"budget_bytes", budget.value_or(0)},
                   {"physical_bytes", physical_memory()},
                   {"budgetable_bytes", budgetable_memory()},
                   {"reserved_bytes", reserved},
                   {"measured_bytes", measured},
                   {"free_bytes", budget && *budget > charged ? *budget - charged : 0},
                   {"over_budget", budget && measured > *budget},
                   {"ports", ports}};
    const auto physical = physical_memory();
    const auto wired = wired_limit_view(config_, gpu_wired_limit(), physical, false);
    json warnings = json::array();
    if (!wired.problem.empty()) warnings.push_back(wired.problem);
    if (auto warning =
            wired_limit_warning("the running ports", mlx, wired, wired.sysctl_mb ? physical : 0))
        warnings.push_back(*warning);
    result["gpu_wired_limit"] = {
        {"applies", wired.applies}, {"bytes", wired.bytes},
        {"source", wired.source},   {"configured_bytes", wired.configured_bytes.value_or(0)},
        {"mlx_bytes", mlx},         {"warnings", warnings}};
    return protocol::ok_reply(result);
}

}  // namespace ensemble
