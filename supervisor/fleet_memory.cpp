// The fleet under the global memory budget: estimates per port, admission of loads, swaps and
// profiles (with eviction of idle ports), the measured total at runtime, and `ensemble budget`.
#include <spdlog/spdlog.h>

#include "supervisor/fleet.h"
#include "supervisor/unified_memory.h"

namespace ensemble {

namespace {

// After stopping a port for being over budget, wait this long for the measurement to follow
// before stopping another.
constexpr auto kEnforceSettle = std::chrono::seconds(5);

// A port in backoff holds no memory now but will in a moment, and a chained model waiting
// for its upstream will once that is back: they are charged too.
bool holds_memory(PortState state) {
    return is_running(state) || state == PortState::backoff || state == PortState::waiting;
}

std::int64_t steady_ms(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

}  // namespace

std::optional<std::uint64_t> Fleet::budget_bytes() const {
    if (config_.supervisor.memory_budget.empty()) return std::nullopt;
    return resolve_budget(config_.supervisor.memory_budget, budgetable_memory());
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
    if (const auto* a = find_assignment(config_, profile, port, handle)) {
        policy.priority = a->priority.value_or(policy.priority);
        policy.evict = a->evict.value_or(policy.evict);
    }
    // A load on demand may make room for another whenever it is idle.
    if (in_pool(port)) policy.evict = EvictPolicy::idle;
    return policy;
}

std::vector<BudgetHolder> Fleet::budget_holders(Clock::time_point now, Runs runs) const {
    std::vector<BudgetHolder> holders;
    for (const auto& [port, p] : ports_) {
        const auto& rt = p->snapshot();
        if (!holds_memory(rt.state) || rt.stop_requested) continue;
        const auto policy = policy_for(port, rt.handle, rt.profile);
        const auto last_used = std::max(rt.last_used, rt.started);
        holders.push_back(
            {port, rt.handle, rt.estimate ? rt.estimate->total() : 0, rt.stats.memory_bytes,
             policy.priority, policy.evict == EvictPolicy::idle,
             !rt.stats.busy() && now - last_used >= config_.supervisor.memory.idle_after,
             steady_ms(last_used)});
    }
    if (runs == Runs::serving_only) return holders;
    // A swap's incoming worker and a replaced one still draining hold memory too, and are
    // never evicted: they go with the swap.
    for (const auto& run : side_runs_) {
        const auto& rt = run->snapshot();
        if (!is_running(rt.state)) continue;
        holders.push_back({rt.port, rt.handle, rt.estimate ? rt.estimate->total() : 0,
                           rt.stats.memory_bytes,
                           policy_for(rt.port, rt.handle, rt.profile).priority, false, false,
                           steady_ms(rt.started)});
    }
    return holders;
}

awaitable<Status> Fleet::admit(const std::map<int, std::string>& starts,
                               const std::set<int>& released, const std::string& profile) {
    const auto budget = budget_bytes();
    if (!budget || starts.empty()) co_return Ok{};
    std::vector<Placement> incoming;
    for (const auto& [port, handle] : starts) {
        auto estimate = estimate_for(port, handle, profile);
        if (!estimate) co_return estimate.error();
        incoming.push_back(
            {port, handle, estimate->total(), policy_for(port, handle, profile).priority});
    }
    const auto now = this->now();
    const auto holders = budget_holders(now);
    const auto plan = plan_admission(*budget, holders, incoming, released);
    if (!plan.admitted) {
        event(starts.begin()->first, "budget_refused", plan.refusal);
        co_return Error{"over_budget", plan.refusal};
    }
    for (int port : plan.evict) {
        auto* victim = find(port);
        if (victim == nullptr) continue;
        const auto& rt = victim->snapshot();
        const auto idle_s =
            std::chrono::duration_cast<std::chrono::seconds>(now - rt.last_used).count();
        evict(*victim, "evicted to make room for " + starts.begin()->second + " (priority " +
                           std::to_string(policy_for(port, rt.handle, rt.profile).priority) +
                           ", idle for " + std::to_string(idle_s) + " s)");
        const int p = port;
        co_await wait_stopped(p, this->now() + std::chrono::seconds(50));
        // Forgotten only once stopped: a worker still stopping stays tracked (and is killed).
        if (const auto* gone = find(p); gone != nullptr && gone->state() == PortState::stopped)
            ports_.erase(p);
    }
    co_return Ok{};
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

void Fleet::evict(Port& port, const std::string& reason) {
    // Unassigned first, so a restart of the supervisor does not bring it back over budget.
    const int number = port.number();
    log_unsaved(store_->remove_assignment(number),
                "that port " + std::to_string(number) + " is unassigned");
    event(number, "evict", "'" + port.snapshot().handle + "' " + reason);
    port.evict(reason);
}

void Fleet::check_budget(Clock::time_point now) {
    const auto budget = budget_bytes();
    if (!budget) return;
    std::uint64_t measured = 0;
    for (const auto& [number, port] : ports_) {
        if (is_running(port->state())) measured += port->snapshot().stats.memory_bytes;
    }
    for (const auto& run : side_runs_) {  // a swap's workers beside the serving ones
        if (is_running(run->state())) measured += run->snapshot().stats.memory_bytes;
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
    // Only a port whose worker holds memory now frees any when stopped (not one in backoff or
    // waiting for its upstream).
    auto holders = budget_holders(now, Runs::serving_only);
    std::erase_if(holders, [](const BudgetHolder& h) { return h.measured == 0; });
    if (auto victim = over_budget_victim(holders)) {
        last_enforced_ = now;
        evict(port_at(*victim), "stopped as " + message + " (over_budget: stop-lowest)");
    }
}

BudgetReport Fleet::budget() const {
    const auto now = this->now();
    const auto budget = budget_bytes();
    BudgetReport r;
    std::uint64_t charged = 0;
    for (const auto& h : budget_holders(now)) {
        r.reserved_bytes += h.estimate;
        r.measured_bytes += h.measured;
        charged += h.charge();
        if (is_mlx_model(config_, h.model)) r.wired.mlx_bytes += h.charge();
        r.ports.push_back({h, budget && *budget > 0
                                  ? static_cast<double>(h.charge()) / static_cast<double>(*budget)
                                  : 0.0});
    }
    r.budget = config_.supervisor.memory_budget;
    r.budget_bytes = budget.value_or(0);
    r.physical_bytes = physical_memory();
    r.budgetable_bytes = budgetable_memory();
    r.free_bytes = budget && *budget > charged ? *budget - charged : 0;
    r.over_budget = budget && r.measured_bytes > *budget;
    const auto wired = wired_limit_view(config_, gpu_wired_limit(), r.physical_bytes, false);
    if (!wired.problem.empty()) r.wired.warnings.push_back(wired.problem);
    if (auto warning = wired_limit_warning("the running ports", r.wired.mlx_bytes, wired,
                                           wired.sysctl_mb ? r.physical_bytes : 0))
        r.wired.warnings.push_back(*warning);
    r.wired.applies = wired.applies;
    r.wired.bytes = wired.bytes;
    r.wired.source = wired.source;
    r.wired.configured_bytes = wired.configured_bytes.value_or(0);
    return r;
}

}  // namespace ensemble
