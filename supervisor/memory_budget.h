// The global memory budget as arithmetic, free of the fleet: what the budget is, what each
// running port holds, and whether a change fits — possibly by evicting idle ports, lowest
// priority and least recently used first. The fleet (fleet_memory.cpp) acts on the plan.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "os/memory_limits.h"
#include "profiles/config.h"
#include "profiles/memory_estimate.h"

namespace ensemble {

// A running port's claim on the budget.
struct BudgetHolder {
    int port = 0;
    std::string model;
    std::uint64_t estimate = 0;
    std::uint64_t measured = 0;  // PSS of worker + engine; 0 until the first heartbeat
    int priority = 0;
    bool evictable = false;  // evict: idle
    bool idle = false;       // no request in flight, none for evict_idle_after
    std::int64_t last_used_ms = 0;

    // What it is charged: the estimate, or what it measurably uses if that is more.
    std::uint64_t charge() const { return std::max(estimate, measured); }
};

// A model to start on a port.
struct Placement {
    int port = 0;
    std::string model;
    std::uint64_t estimate = 0;
    int priority = 0;
};

struct AdmissionPlan {
    bool admitted = false;
    std::vector<int> evict;  // ports to unload first, in order
    std::uint64_t needed = 0;
    std::uint64_t free_before = 0;
    std::string refusal;  // why not, naming the budget, the holders and the shortfall
};

// "170GiB" or "85%" of `physical` bytes; nullopt for an empty or malformed text.
std::optional<std::uint64_t> resolve_budget(const std::string& text, std::uint64_t physical);

// Whether `incoming` fits once the ports in `released` stop (they are being replaced or
// unloaded by the same operation). Ports may be evicted when they allow it, are idle, are not
// released anyway, and have a priority no higher than the highest incoming one.
AdmissionPlan plan_admission(std::uint64_t budget, const std::vector<BudgetHolder>& holders,
                             const std::vector<Placement>& incoming, const std::set<int>& released);

// The port to stop when the measured total is over budget: lowest priority, then least
// recently used; nullopt when there is none.
std::optional<int> over_budget_victim(const std::vector<BudgetHolder>& holders);

// The profile's entry for `port` when it assigns `handle` there (its overrides apply), or null.
const PortAssignment* find_assignment(const Config& config, const std::string& profile, int port,
                                      const std::string& handle);

// The estimate of `handle` served on `port` as part of `profile` (its context and parallel
// overrides, the engine's and model's args).
Result<MemoryEstimate> estimate_assignment(const Config& config, int port,
                                           const std::string& handle, const std::string& profile);

// "12.0 GiB", "512.0 MiB": for messages.
std::string format_bytes(std::uint64_t bytes);

}  // namespace ensemble
