// ensemble: the operator's command line. Talks to ensembled over control.sock; human tables by
// default, --json for scripts. `ensemble check FILE` validates a config without a supervisor.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <thread>

#include "profiles/config.h"
#include "supervisor/control_client.h"
#include "supervisor/fleet.h"
#include "supervisor/gateway_export.h"
#include "supervisor/memory_budget.h"
#include "supervisor/unified_memory.h"

using namespace ensemble;
using nlohmann::json;

namespace {

std::string human_bytes(std::uint64_t bytes) {
    return bytes == 0 ? "-" : format_bytes(bytes);
}

std::string human_duration(std::int64_t s) {
    if (s <= 0) return "-";
    if (s < 120) return std::to_string(s) + "s";
    if (s < 7200) return std::to_string(s / 60) + "m";
    if (s < 172800) return std::to_string(s / 3600) + "h";
    return std::to_string(s / 86400) + "d";
}

void print_ports(const json& ports) {
    std::printf("%-6s %-22s %-10s %-9s %-8s %-7s %-8s %-10s %-10s %-6s %s\n", "PORT", "MODEL",
                "PROFILE", "STATE", "PID", "UPTIME", "RESTARTS", "ESTIMATE", "MEASURED", "REQS",
                "TOK/S   LAST FAILURE");
    for (const auto& p : ports) {
        std::printf("%-6d %-22s %-10s %-9s %-8lld %-7s %-8d %-10s %-10s %-6llu %-7.1f %s\n",
                    p.value("port", 0), p.value("model", "").c_str(),
                    p.value("profile", "").empty() ? "-" : p.value("profile", "").c_str(),
                    p.value("state", "").c_str(), static_cast<long long>(p.value("pid", 0LL)),
                    human_duration(p.value("uptime_s", 0LL)).c_str(), p.value("restarts", 0),
                    human_bytes(p.value("memory_estimate_bytes", 0ULL)).c_str(),
                    human_bytes(p.value("memory_bytes", 0ULL)).c_str(),
                    static_cast<unsigned long long>(p.value("requests", 0ULL)),
                    p.value("tokens_per_s", 0.0), p.value("last_failure", "").c_str());
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

void print_status(const json& result);
void print_profiles(const json& result);
void print_events(const json& events);

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
            std::printf("reloaded; changed ports: %s %s\n", result["changed_ports"].dump().c_str(),
                        result.value("hint", "").c_str());
            return;
        case Verb::load:
        case Verb::unload:
        case Verb::swap:
        case Verb::restart:
        case Verb::profile_load:
        case Verb::profile_unload:
            break;  // a port or ports, below
    }
    if (result.contains("ports")) {
        print_ports(result["ports"]);
    } else if (result.contains("port")) {
        print_ports(json::array({result}));
    } else {
        std::cout << result.dump(2) << '\n';
    }
}

void print_status(const json& result) {
    print_ports(result["ports"]);
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

// `ensemble estimate FILE`: the budget's estimate of a model, without a supervisor.
int estimate(const EstimateRequest& request) {
    auto e = estimate_memory(request);
    if (!e) {
        std::cerr << "ensemble: " << e.error().message << '\n';
        return 1;
    }
    std::printf("%s (%s, context %d, parallel %d)\n", request.path.c_str(), e->source.c_str(),
                request.context, request.parallel);
    std::printf(
        "  weights   %12llu  %s\n  kv cache  %12llu  %s\n  compute   %12llu  %s\n"
        "  overhead  %12llu  %s\n  total     %12llu  %s\n",
        static_cast<unsigned long long>(e->weights), human_bytes(e->weights).c_str(),
        static_cast<unsigned long long>(e->kv_cache), human_bytes(e->kv_cache).c_str(),
        static_cast<unsigned long long>(e->compute), human_bytes(e->compute).c_str(),
        static_cast<unsigned long long>(e->overhead), human_bytes(e->overhead).c_str(),
        static_cast<unsigned long long>(e->total()), human_bytes(e->total()).c_str());
    return 0;
}

// Each profile's estimated footprint against the budget: a boot profile that cannot fit is
// better found by `check` than at boot.
bool check_profiles_fit(const Config& config) {
    const auto& text = config.supervisor.memory_budget;
    std::optional<std::uint64_t> budget;
    if (!text.empty()) budget = resolve_budget(text, budgetable_memory());
    // As at boot, when the configured wired limit is set (deploy/install-wired-limit's
    // LaunchDaemon).
    const auto physical = physical_memory();
    const auto wired = wired_limit_view(config, gpu_wired_limit(), physical, true);
    if (wired.applies)
        std::printf("GPU wired limit: %s (%s)\n", format_bytes(wired.bytes).c_str(),
                    wired.source.c_str());
    if (!wired.problem.empty()) std::printf("warning: %s\n", wired.problem.c_str());
    bool fits = true;
    for (const auto& [name, profile] : config.profiles) {
        std::uint64_t total = 0;
        std::uint64_t mlx = 0;
        std::string problem;
        for (const auto& [port, a] : profile.ports) {
            auto e = estimate_assignment(config, port, a.model, name);
            if (e) total += e->total();
            if (e && is_mlx_model(config, a.model)) mlx += e->total();
            if (!e && problem.empty()) problem = e.error().message;
        }
        if (auto warning = wired_limit_warning("profile '" + name + "'", mlx, wired,
                                               wired.sysctl_mb ? physical : 0))
            std::printf("warning: %s\n", warning->c_str());
        if (!problem.empty()) {
            std::printf("profile '%s': %s\n", name.c_str(), problem.c_str());
            fits = fits && !budget;  // only an error when a budget needs the number
        } else if (budget && total > *budget) {
            std::printf("error: profile '%s' needs %s, over the %s memory budget (%s)\n",
                        name.c_str(), format_bytes(total).c_str(), format_bytes(*budget).c_str(),
                        text.c_str());
            fits = false;
        } else {
            std::printf("profile '%s': %s%s\n", name.c_str(), format_bytes(total).c_str(),
                        budget ? (" of the " + format_bytes(*budget) + " budget").c_str() : "");
        }
    }
    return fits;
}

int check(const std::string& file) {
    auto loaded = load_config(file);
    for (const auto& issue : loaded.issues)
        std::cerr << issue.to_string() << '\n';
    if (!loaded.config) {
        std::cerr << file << ": " << loaded.issues.size() << " error(s)\n";
        return 1;
    }
    std::cout << file << ": ok (" << loaded.config->models.size() << " models, "
              << loaded.config->profiles.size() << " profiles)\n";
    return check_profiles_fit(*loaded.config) ? 0 : 1;
}

// `ensemble wired-limit`: the GPU wired limit now and the configured one; with --apply (root,
// macOS) sets the configured one until the next reboot (deploy/install-wired-limit's
// LaunchDaemon sets it at every boot); --print-mb prints only the configured MiB.
int wired_limit(const std::string& config_path, bool apply, bool print_mb) {
    auto loaded = load_config(config_path, false);
    if (!loaded.config) {
        for (const auto& issue : loaded.issues)
            std::cerr << issue.to_string() << '\n';
        return 1;
    }
    const auto& config = *loaded.config;
    const auto configured = config.supervisor.gpu_wired_limit_bytes;
    if (print_mb) {  // for deploy/install-wired-limit: the MiB to set, or nothing
        if (configured)
            std::printf("%llu\n", static_cast<unsigned long long>(wired_limit_mb(*configured)));
        return 0;
    }
    const auto system = gpu_wired_limit();
    if (!system) {
        std::cerr << "ensemble: " << system.error().message << '\n';
        return 1;
    }
    if (system->applies) {
        std::printf("iogpu.wired_limit_mb = %llu%s\n", static_cast<unsigned long long>(system->mb),
                    system->mb == 0 ? " (the system default)" : "");
    } else {
        std::printf("this OS has no GPU wired limit (it is a macOS setting)\n");
    }
    if (configured) {
        std::printf("supervisor.gpu_wired_limit = %s (%llu MiB)\n",
                    format_bytes(*configured).c_str(),
                    static_cast<unsigned long long>(wired_limit_mb(*configured)));
    } else {
        std::printf("supervisor.gpu_wired_limit is not set\n");
    }
    if (!apply) return 0;
    if (!configured) {
        std::printf("nothing to apply: set supervisor.gpu_wired_limit in %s\n",
                    config_path.c_str());
        return 0;
    }
    if (auto ok = set_gpu_wired_limit(wired_limit_mb(*configured)); !ok) {
        std::cerr << "ensemble: " << ok.error().message << '\n';
        return 1;
    }
    std::printf("set iogpu.wired_limit_mb = %llu\n",
                static_cast<unsigned long long>(wired_limit_mb(*configured)));
    return 0;
}

// Follows a log file like tail -f (the CLI runs on the supervisor's machine, as its user).
[[noreturn]] void follow(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "r");
    if (f != nullptr) std::fseek(f, 0, SEEK_END);
    char buf[4096];
    for (;;) {
        if (f != nullptr) {
            while (std::fgets(buf, sizeof buf, f) != nullptr)
                std::fputs(buf, stdout);
            std::fflush(stdout);
            std::clearerr(f);
        } else {
            f = std::fopen(path.c_str(), "r");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"ensemble: drive the ensembled supervisor"};
    app.require_subcommand(1);
    std::string socket_option, config_option;
    bool as_json = false;
    app.add_option("--socket", socket_option,
                   "control socket (default: from the config's run_dir)");
    app.add_option("--config,-c", config_option, "config file, to find the control socket");
    app.add_flag("--json", as_json, "print the raw JSON reply");

    protocol::ControlRequest request;
    int port = 0;
    std::string model, profile_name, check_file;
    bool follow_flag = false;
    int lines = 50;
    // One subcommand per control verb, from the protocol's table.
    std::map<std::string_view, CLI::App*> groups;
    auto* profile = app.add_subcommand("profile", "list, load or unload profiles");
    profile->require_subcommand(1);
    groups["profile"] = profile;
    for (const auto& v : protocol::kVerbs) {
        auto* parent = v.group.empty() ? &app : groups.at(v.group);
        auto* sub = parent->add_subcommand(std::string(v.subcommand), std::string(v.help));
        if (v.needs_port) sub->add_option("port", port)->required()->check(CLI::Range(1, 65535));
        if (v.needs_model) sub->add_option("model", model)->required();
        if (v.needs_profile) sub->add_option("name", profile_name)->required();
        if (v.takes_lines) {
            sub->add_option("-n,--lines", lines, "how many to show")->capture_default_str();
            sub->add_flag("-f,--follow", follow_flag, "keep printing what comes");
        }
        sub->callback([&request, verb = v.verb] { request.verb = verb; });
    }
    std::string export_kind, export_host_option;
    bool export_aliases = false;
    auto* exportc = app.add_subcommand("export", "the assignments, for a gateway in front");
    exportc->require_subcommand(1);
    const std::string host_help =
        "host the gateway reaches this machine by (default: bind_host, or this machine's name "
        "when it binds every address)";
    auto* litellm = exportc->add_subcommand("litellm", "a LiteLLM model_list (YAML)");
    litellm->add_option("--host", export_host_option, host_help);
    litellm->add_flag("--with-aliases", export_aliases, "an entry for each alias as well");
    litellm->callback([&] {
        export_kind = "litellm";
        request.verb = protocol::Verb::status;
    });
    auto* handles =
        exportc->add_subcommand("handles", "JSON lines: handle, port, url, model, state");
    handles->add_option("--host", export_host_option, host_help);
    handles->callback([&] {
        export_kind = "handles";
        request.verb = protocol::Verb::status;
    });
    EstimateRequest estimate_request;
    auto* estimatec = app.add_subcommand(
        "estimate", "the memory budget's estimate of a GGUF file or MLX directory; runs nothing");
    estimatec->add_option("path", estimate_request.path)->required();
    estimatec->add_option("--context", estimate_request.context)->capture_default_str();
    estimatec->add_option("--parallel", estimate_request.parallel)->capture_default_str();
    estimatec->add_option("--engine-arg", estimate_request.engine_args,
                          "an engine argument (repeat; e.g. --engine-arg=-ctk --engine-arg=q8_0)");
    auto* checkc = app.add_subcommand("check", "validate a config file; runs nothing");
    checkc->add_option("file", check_file)->required();
    bool apply_wired_limit = false;
    bool print_wired_mb = false;
    auto* wiredc = app.add_subcommand(
        "wired-limit", "macOS: the GPU wired limit now and in the config; --apply sets it (root)");
    wiredc->add_flag("--apply", apply_wired_limit,
                     "set iogpu.wired_limit_mb to supervisor.gpu_wired_limit now (until the next "
                     "reboot; deploy/install-wired-limit sets it at every boot)");
    wiredc->add_flag("--print-mb", print_wired_mb,
                     "print only the configured limit in MiB (nothing when none is set)");
    CLI11_PARSE(app, argc, argv);

    if (!check_file.empty()) return check(check_file);
    if (estimatec->parsed()) return estimate(estimate_request);
    if (wiredc->parsed()) {
        const auto file = config_path(config_option);
        if (file.empty()) {
            std::cerr << "ensemble: wired-limit needs the config: -c FILE (or ENSEMBLE_CONFIG)\n";
            return 2;
        }
        return wired_limit(file, apply_wired_limit, print_wired_mb);
    }
    if (port != 0) request.port = port;
    request.model = model;
    request.profile = profile_name;
    request.lines = lines;
    const auto socket = control_socket_path(socket_option, config_option);
    if (!socket) {
        std::cerr << "ensemble: " << socket.error().message << '\n';
        return 3;
    }
    auto reply = call_supervisor(*socket, request);
    if (!reply) {
        std::cerr << "ensemble: " << reply.error().message << '\n';
        return 3;
    }
    if (!export_kind.empty() && reply->value("ok", false)) {
        const auto& result = (*reply)["result"];
        const auto host = export_host(result.value("bind_host", ""), export_host_option);
        std::cout << (export_kind == "litellm" ? litellm_model_list(result, host, export_aliases)
                                               : handles_jsonl(result, host));
        return 0;
    }
    if (as_json) {
        std::cout << reply->dump(2) << '\n';
    } else if (reply->value("ok", false)) {
        print_human(request.verb, (*reply)["result"]);
    }
    if (!reply->value("ok", false)) {
        if (!as_json && reply->contains("result")) print_human(request.verb, (*reply)["result"]);
        std::cerr << "ensemble: " << (*reply)["error"].value("message", "failed") << '\n';
        return 1;
    }
    if (follow_flag && request.verb == protocol::Verb::logs)
        follow((*reply)["result"].value("engine_log", ""));
    if (follow_flag && request.verb == protocol::Verb::events) {
        std::int64_t last = 0;
        for (const auto& e : (*reply)["result"]["events"])
            last = std::max<std::int64_t>(last, e.value("id", 0LL));
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            auto more = call_supervisor(*socket, request);
            if (!more || !more->value("ok", false)) return 3;
            json fresh = json::array();
            for (const auto& e : (*more)["result"]["events"]) {
                if (e.value("id", 0LL) > last) fresh.push_back(e);
            }
            for (const auto& e : fresh)
                last = std::max<std::int64_t>(last, e.value("id", 0LL));
            if (!fresh.empty()) print_events(fresh);
        }
    }
    return 0;
}
