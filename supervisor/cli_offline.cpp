// The CLI's subcommands that need no supervisor: check (which asks it, if it runs, for a
// registry's live comparison), estimate, wired-limit; and `logs -f`.
#include <cstdio>
#include <iostream>
#include <thread>

#include "profiles/config.h"
#include "supervisor/cli.h"
#include "supervisor/control_client.h"
#include "supervisor/handle_registry.h"
#include "supervisor/memory_budget.h"
#include "supervisor/unified_memory.h"

namespace ensemble::cli {

namespace {

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
            if (config.supervisor.reserved_ports.contains(port))
                std::printf(
                    "warning: profile '%s' uses port %d, which supervisor.reserved_ports "
                    "keeps free: 'profile load %s' needs --force\n",
                    name.c_str(), port, name.c_str());
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

}  // namespace

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

namespace {

// `check --registry`: the file against the config and, if ensembled answers on the config's
// control socket, the ports it serves. Whether it holds no error.
bool check_registry(const std::filesystem::path& registry, const std::string& config_file,
                    const Config& config) {
    auto read = read_registry(registry);
    if (!read.readable) {
        std::cerr << read.problems.front().text << '\n';
        return false;
    }
    std::optional<nlohmann::json> status;
    const auto socket = control_socket_path("", config_file);
    protocol::ControlRequest request;
    request.verb = protocol::Verb::status;
    auto reply =
        socket ? call_supervisor(*socket, request) : Result<nlohmann::json>(socket.error());
    if (reply && reply->value("ok", false)) {
        status = (*reply)["result"];
    } else {
        std::cout << "note: ensembled does not answer ("
                  << (reply ? reply->value("error", nlohmann::json::object())
                                  .value("message", "it refused the status request")
                            : reply.error().message)
                  << "): " << printable(registry.string())
                  << " is checked against the config only\n";
    }
    auto found = read.problems;
    const auto compared = compare_registry(registry, read.entries, config, status);
    found.insert(found.end(), compared.begin(), compared.end());
    int errors = 0;
    for (const auto& f : found) {
        (f.error ? std::cerr : std::cout) << (f.error ? "" : "warning: ") << f.text << '\n';
        errors += f.error ? 1 : 0;
    }
    if (errors > 0) {
        std::cerr << printable(registry.string()) << ": " << errors << " error(s)\n";
        return false;
    }
    std::cout << printable(registry.string()) << ": ok (" << read.entries.size() << " handles"
              << (status ? ", each routed to the port ensembled assigns its model" : "") << ")\n";
    return true;
}

}  // namespace

int check(const std::string& file, const std::string& registry) {
    auto loaded = load_config(file);
    for (const auto& issue : loaded.issues)
        std::cerr << issue.to_string() << '\n';
    if (!loaded.config) {
        std::cerr << file << ": " << loaded.issues.size() << " error(s)\n";
        return 1;
    }
    std::cout << file << ": ok (" << loaded.config->models.size() << " models, "
              << loaded.config->profiles.size() << " profiles)\n";
    for (const auto& broken : naming_violations(*loaded.config))
        std::cout << "warning: " << broken << '\n';
    const bool fits = check_profiles_fit(*loaded.config);
    const bool registry_ok = registry.empty() || check_registry(registry, file, *loaded.config);
    return fits && registry_ok ? 0 : 1;
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

}  // namespace ensemble::cli
