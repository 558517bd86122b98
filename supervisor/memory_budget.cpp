#include "supervisor/memory_budget.h"

#include <algorithm>
#include <cstdio>
#include <regex>

#include "os/cpu_features.h"
#include "profiles/config.h"

namespace ensemble {

namespace {

// Eviction order: lowest priority first, then least recently used.
bool evict_before(const BudgetHolder& a, const BudgetHolder& b) {
    if (a.priority != b.priority) return a.priority < b.priority;
    return a.last_used_ms < b.last_used_ms;
}

std::string holders_text(const std::vector<BudgetHolder>& holders) {
    std::string text;
    for (const auto& h : holders) {
        text += (text.empty() ? "" : ", ") + std::to_string(h.port) + " '" + h.model + "' " +
                format_bytes(h.charge());
    }
    return text.empty() ? "no port" : text;
}

std::string incoming_text(const std::vector<Placement>& incoming) {
    std::string text;
    for (const auto& p : incoming) {
        text += (text.empty() ? "" : ", ") + std::string("'") + p.model + "' on port " +
                std::to_string(p.port) + " (" + format_bytes(p.estimate) + ")";
    }
    return text;
}

}  // namespace

std::string format_bytes(std::uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    auto value = static_cast<double>(bytes);
    int unit = 0;
    while (value >= 1024 && unit < 4) {
        value /= 1024;
        ++unit;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
    return buf;
}

std::optional<std::uint64_t> resolve_budget(const std::string& text, std::uint64_t physical) {
    static const std::regex kPercent(R"(^([1-9][0-9]?|100)%$)");
    std::smatch match;
    if (std::regex_match(text, match, kPercent))
        return physical * static_cast<std::uint64_t>(std::stoi(match[1])) / 100;
    return parse_bytes(text);
}

AdmissionPlan plan_admission(std::uint64_t budget, const std::vector<BudgetHolder>& holders,
                             const std::vector<Placement>& incoming,
                             const std::set<int>& released) {
    AdmissionPlan plan;
    std::uint64_t held = 0;
    std::vector<BudgetHolder> staying;
    for (const auto& h : holders) {
        if (released.count(h.port)) continue;
        held += h.charge();
        staying.push_back(h);
    }
    int top_priority = std::numeric_limits<int>::min();
    for (const auto& p : incoming) {
        plan.needed += p.estimate;
        top_priority = std::max(top_priority, p.priority);
    }
    plan.free_before = budget > held ? budget - held : 0;
    if (plan.needed <= plan.free_before) {
        plan.admitted = true;
        return plan;
    }
    std::vector<BudgetHolder> candidates;
    for (const auto& h : staying) {
        if (h.evictable && h.idle && h.priority <= top_priority) candidates.push_back(h);
    }
    std::sort(candidates.begin(), candidates.end(), evict_before);
    std::uint64_t free = plan.free_before;
    for (const auto& c : candidates) {
        if (plan.needed <= free) break;
        plan.evict.push_back(c.port);
        free += c.charge();
    }
    if (plan.needed <= free) {
        plan.admitted = true;
        return plan;
    }
    plan.evict.clear();  // all or nothing: evicting would not make room, so evict nobody
    plan.refusal = incoming_text(incoming) + " needs " + format_bytes(plan.needed) + ", but " +
                   format_bytes(plan.free_before) + " of the " + format_bytes(budget) +
                   " memory budget is free (held by " + holders_text(staying) + "); short by " +
                   format_bytes(plan.needed - free) +
                   (candidates.empty() ? "" : " even after evicting every idle evictable port") +
                   ". Unload a port, allow eviction ('evict: idle') or raise memory_budget";
    return plan;
}

const PortAssignment* find_assignment(const Config& config, const std::string& profile, int port,
                                      const std::string& handle) {
    const auto p = config.profiles.find(profile);
    if (p == config.profiles.end()) return nullptr;
    const auto a = p->second.ports.find(port);
    return a == p->second.ports.end() || a->second.model != handle ? nullptr : &a->second;
}

Result<MemoryEstimate> estimate_assignment(const Config& config, int port,
                                           const std::string& handle, const std::string& profile) {
    const auto* model = config.find_model(handle);
    if (model == nullptr) return Error{"unknown_model", "unknown model '" + handle + "'"};
    const auto* overrides = find_assignment(config, profile, port, handle);
    EstimateRequest request;
    request.path = model->path;
    request.context = overrides ? overrides->context.value_or(model->context) : model->context;
    request.parallel = overrides ? overrides->parallel.value_or(model->parallel) : model->parallel;
    request.configured = model->memory_bytes;
    request.chained = !model->upstream.empty();
    request.cpu_has_amx = cpu_has_amx();
    if (const auto engine = config.engines.find(model->engine); engine != config.engines.end()) {
        request.engine = engine->second.preset.name;
        request.engine_args = engine->second.args;
    }
    request.engine_args.insert(request.engine_args.end(), model->args.begin(), model->args.end());
    auto estimate = estimate_memory(request);
    if (!estimate) {
        return Error{estimate.error().code,
                     "cannot estimate the memory of '" + handle + "': " + estimate.error().message};
    }
    return estimate;
}

std::optional<int> over_budget_victim(const std::vector<BudgetHolder>& holders) {
    if (holders.empty()) return std::nullopt;
    return std::min_element(holders.begin(), holders.end(), evict_before)->port;
}

}  // namespace ensemble
