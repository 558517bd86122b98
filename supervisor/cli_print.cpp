// The CLI's human output: tables of ports, the budget, profiles, events, per verb.
#include <cstdio>
#include <ctime>
#include <iostream>

#include "supervisor/cli.h"
#include "supervisor/memory_budget.h"

namespace ensemble::cli {

using nlohmann::json;

std::string human_bytes(std::uint64_t bytes) {
    return bytes == 0 ? "-" : format_bytes(bytes);
}

namespace {

// "42s", "5m", "3h", "2d".
std::string duration_text(long long s) {
    if (s < 120) return std::to_string(s) + "s";
    if (s < 7200) return std::to_string(s / 60) + "m";
    if (s < 172800) return std::to_string(s / 3600) + "h";
    return std::to_string(s / 86400) + "d";
}

// How long a port has served; "-" when it does not (a port ready this second has "0s").
std::string uptime_text(const json& p) {
    const auto s = p.value("uptime_s", 0LL);
    if (s <= 0 && p.value("state", "") != "ready") return "-";
    return duration_text(s);
}

// "loading 41%" while a load's progress is known, else the state.
std::string state_text(const json& p) {
    auto text = p.value("state", "");
    if (p.contains("load_progress"))
        text += " " +
                std::to_string(static_cast<int>(p["load_progress"].value("fraction", 0.0) * 100)) +
                "%";
    return text;
}

void print_ports(const json& ports) {
    std::printf("%-6s %-22s %-10s %-12s %-8s %-7s %-8s %-10s %-10s %-6s %s\n", "PORT", "MODEL",
                "PROFILE", "STATE", "PID", "UPTIME", "RESTARTS", "ESTIMATE", "MEASURED", "REQS",
                "TOK/S   LAST FAILURE");
    for (const auto& p : ports) {
        std::printf("%-6d %-22s %-10s %-12s %-8lld %-7s %-8d %-10s %-10s %-6llu %-7.1f %s\n",
                    p.value("port", 0), p.value("model", "").c_str(),
                    p.value("profile", "").empty() ? "-" : p.value("profile", "").c_str(),
                    state_text(p).c_str(), static_cast<long long>(p.value("pid", 0LL)),
                    uptime_text(p).c_str(), p.value("restarts", 0),
                    human_bytes(p.value("memory_estimate_bytes", 0ULL)).c_str(),
                    human_bytes(p.value("memory_bytes", 0ULL)).c_str(),
                    static_cast<unsigned long long>(p.value("requests", 0ULL)),
                    p.value("last_busy_tokens_per_s", 0.0), p.value("last_failure", "").c_str());
        if (const auto& up = p.value("upstream", json::object()); up.contains("port")) {
            std::printf("       in front of %s on port %d\n", up.value("model", "").c_str(),
                        up.value("port", 0));
        }
        if (p.contains("incoming")) {
            std::printf("       swapping in %s beside it: %s\n",
                        p["incoming"].value("model", "").c_str(),
                        state_text(p["incoming"]).c_str());
        }
    }
}

// "GPU wired limit 144.0 GiB (the system default ...); MLX models hold 72.0 GiB", when one applies.
void print_wired_limit(const json& wired) {
    if (!wired.value("applies", false)) return;
    std::printf("GPU wired limit %s (%s); MLX models hold %s\n",
                human_bytes(wired.value("bytes", 0ULL)).c_str(), wired.value("source", "").c_str(),
                human_bytes(wired.value("mlx_bytes", 0ULL)).c_str());
    for (const auto& w : wired.value("warnings", json::array()))
        std::printf("warning: %s\n", w.get<std::string>().c_str());
}

void print_budget(const json& b) {
    if (b.value("budget_bytes", 0ULL) == 0) {
        std::printf("no memory budget (set supervisor.memory_budget, e.g. 170GiB or 85%%)\n");
    } else {
        std::printf("budget %s (%s)  reserved %s  measured %s  free %s%s\n",
                    human_bytes(b.value("budget_bytes", 0ULL)).c_str(),
                    b.value("budget", "").c_str(),
                    human_bytes(b.value("reserved_bytes", 0ULL)).c_str(),
                    human_bytes(b.value("measured_bytes", 0ULL)).c_str(),
                    human_bytes(b.value("free_bytes", 0ULL)).c_str(),
                    b.value("over_budget", false) ? "  OVER BUDGET" : "");
    }
    std::printf("%-6s %-22s %-10s %-10s %-7s %-8s %-6s %s\n", "PORT", "MODEL", "ESTIMATE",
                "MEASURED", "SHARE", "PRIORITY", "EVICT", "IDLE");
    for (const auto& p : b["ports"]) {
        std::printf("%-6d %-22s %-10s %-10s %5.1f%%  %-8d %-6s %s\n", p.value("port", 0),
                    p.value("model", "").c_str(),
                    human_bytes(p.value("estimate_bytes", 0ULL)).c_str(),
                    human_bytes(p.value("measured_bytes", 0ULL)).c_str(),
                    100.0 * p.value("share", 0.0), p.value("priority", 0),
                    p.value("evict", "").c_str(), p.value("idle", false) ? "yes" : "no");
    }
    print_wired_limit(b.value("gpu_wired_limit", json::object()));
}

}  // namespace

void print_status(const json& result) {
    print_ports(result["ports"]);
    if (const auto door = result.value("front_door", json()); door.is_object()) {
        std::string facts = door.value("state", "");
        if (const int pid = door.value("pid", 0); pid > 0) facts += ", pid " + std::to_string(pid);
        if (door.value("state", "") == "serving")
            facts += ", up " + duration_text(door.value("uptime_s", 0LL));
        if (const int restarts = door.value("restarts", 0); restarts > 0)
            facts += ", restarted " + std::to_string(restarts) + " times";
        if (const auto asked = door.value("loads_asked", 0); asked > 0)
            facts += ", " + std::to_string(asked) + " loads on demand under way";
        std::printf("front door %s: %s\n", door.value("listen", "").c_str(), facts.c_str());
    }
    const auto memory = result.value("memory", json::object());
    if (memory.value("budget_bytes", 0ULL) > 0 || memory.value("gpu_wired_limit_bytes", 0ULL) > 0) {
        std::printf("memory: budget %s, reserved %s, measured %s; GPU wired limit %s, MLX %s\n",
                    human_bytes(memory.value("budget_bytes", 0ULL)).c_str(),
                    human_bytes(memory.value("reserved_bytes", 0ULL)).c_str(),
                    human_bytes(memory.value("measured_bytes", 0ULL)).c_str(),
                    human_bytes(memory.value("gpu_wired_limit_bytes", 0ULL)).c_str(),
                    human_bytes(memory.value("mlx_bytes", 0ULL)).c_str());
    }
    for (const auto& w : result.value("warnings", json::array()))
        std::printf("warning: %s\n", w.get<std::string>().c_str());
}

void print_profiles(const json& result) {
    for (const auto& p : result["profiles"]) {
        std::printf("%s %s:", p.value("active", false) ? "*" : " ", p.value("name", "").c_str());
        for (const auto& [port, model] : p["ports"].items())
            std::printf(" %s=%s", port.c_str(), model.get<std::string>().c_str());
        std::printf("\n");
    }
}

void print_reloaded(const json& result) {
    const auto changed = result.value("changed_ports", json::array());
    if (changed.empty()) {
        std::printf("reloaded the config; every running worker matches it\n");
        return;
    }
    std::string ports;
    for (const auto& port : changed)
        ports += (ports.empty() ? "" : ", ") + port.dump();
    std::printf("reloaded the config; the %s %s would now start differently (%s)\n",
                changed.size() == 1 ? "worker on port" : "workers on ports", ports.c_str(),
                result.value("hint", "").c_str());
}

void print_events(const json& events) {
    for (const auto& e : events) {
        const auto at = static_cast<time_t>(e.value("at_ms", 0LL) / 1000);
        char when[32];
        std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&at));
        std::printf("%s  %-5s %-14s %s\n", when,
                    e.value("port", 0) ? std::to_string(e.value("port", 0)).c_str() : "-",
                    e.value("kind", "").c_str(), e.value("message", "").c_str());
    }
}

void print_human(protocol::Verb verb, const json& result) {
    using protocol::Verb;
    switch (verb) {
        case Verb::status:
            print_status(result);
            return;
        case Verb::budget:
            print_budget(result);
            return;
        case Verb::profile_list:
            print_profiles(result);
            return;
        case Verb::logs:
            for (const auto& line : result["engine"])
                std::cout << line.get<std::string>() << '\n';
            return;
        case Verb::events:
            print_events(result["events"]);
            return;
        case Verb::reload:
            print_reloaded(result);
            return;
        case Verb::load:
        case Verb::unload:
        case Verb::swap:
        case Verb::restart:
        case Verb::profile_load:
        case Verb::profile_unload:
            break;  // a port or ports, below
    }
    if (result.value("accepted", false)) {
        std::cout << "accepted: " << result.value("verb", "")
                  << (result.contains("port") ? " " + std::to_string(result.value("port", 0)) : "")
                  << (result.contains("model") ? " " + result.value("model", "") : "")
                  << (result.contains("profile") ? " " + result.value("profile", "") : "")
                  << "; not waiting (see 'ensemble status' or 'ensemble events -f')\n";
        return;
    }
    if (verb == Verb::profile_unload) {
        const auto stopped = result.value("stopped", json::array());
        std::string ports;
        for (const auto& port : stopped)
            ports += (ports.empty() ? "" : ", ") + port.dump();
        std::cout << (stopped.empty()
                          ? std::string("nothing to stop: no port serves the profile")
                          : "stopped port" + std::string(stopped.size() == 1 ? " " : "s ") + ports)
                  << '\n';
        return;
    }
    if (result.contains("ports")) {
        print_ports(result["ports"]);
    } else if (result.contains("port")) {
        print_ports(json::array({result}));
    } else {
        std::cout << result.dump(2) << '\n';
    }
}

}  // namespace ensemble::cli
