#include "supervisor/unified_memory.h"

#include <algorithm>

#include "supervisor/memory_budget.h"

namespace ensemble {

namespace {

constexpr std::uint64_t kMiB = 1ULL << 20;
constexpr std::uint64_t kGiB = 1ULL << 30;
constexpr std::uint64_t kLeftForTheSystem = 8 * kGiB;

std::uint64_t mb_of(std::uint64_t bytes) {
    return wired_limit_mb(bytes);
}

}  // namespace

WiredLimitView wired_limit_view(const Config& config, const Result<GpuWiredLimit>& system,
                                std::uint64_t physical, bool at_boot) {
    WiredLimitView view;
    view.configured_bytes = config.supervisor.gpu_wired_limit_bytes;
    const bool os_has_one = system && system->applies;
    if (!system) view.problem = system.error().message;
    if (os_has_one) view.sysctl_mb = system->mb;
    view.applies = os_has_one || view.configured_bytes.has_value();
    if (!view.applies) return view;
    if (view.configured_bytes && (at_boot || !os_has_one)) {
        view.bytes = *view.configured_bytes;
        view.source = "supervisor.gpu_wired_limit (" + std::to_string(mb_of(view.bytes)) +
                      (os_has_one ? " MiB, set at boot by deploy/install-wired-limit)"
                                  : " MiB: a macOS setting, checked as a Mac would apply it)");
    } else if (view.sysctl_mb && *view.sysctl_mb > 0) {
        view.bytes = *view.sysctl_mb * kMiB;
        view.source = "iogpu.wired_limit_mb=" + std::to_string(*view.sysctl_mb);
    } else {
        view.bytes = default_wired_limit_bytes(physical);
        view.source = "the system default, about " + std::to_string(kDefaultWiredPercent) +
                      "% of " + format_bytes(physical) + " (iogpu.wired_limit_mb=0)";
    }
    if (view.configured_bytes && os_has_one && physical > kLeftForTheSystem &&
        *view.configured_bytes > physical - kLeftForTheSystem) {
        view.problem = "supervisor.gpu_wired_limit (" + format_bytes(*view.configured_bytes) +
                       ") leaves less than 8 GiB of this Mac's " + format_bytes(physical) +
                       " to the system: lower it";
    } else if (view.configured_bytes && view.sysctl_mb &&
               *view.sysctl_mb != mb_of(*view.configured_bytes)) {
        view.problem = "iogpu.wired_limit_mb is " + std::to_string(*view.sysctl_mb) +
                       " but supervisor.gpu_wired_limit asks for " +
                       std::to_string(mb_of(*view.configured_bytes)) + " MiB: run '" +
                       wired_limit_command(mb_of(*view.configured_bytes)) +
                       "' (and deploy/install-wired-limit again, so the boot sets the same)";
    }
    return view;
}

bool is_mlx_model(const Config& config, const std::string& handle) {
    const auto* model = config.find_model(handle);
    if (model == nullptr) return false;
    const auto engine = config.engines.find(model->engine);
    return engine != config.engines.end() && engine->second.preset.name == "mlx-lm";
}

std::uint64_t suggested_wired_limit_mb(std::uint64_t mlx_bytes, std::uint64_t physical) {
    const auto wanted = mlx_bytes + mlx_bytes / 10;
    if (physical <= kLeftForTheSystem) return mb_of(wanted);  // unknown machine: no cap
    return mb_of(std::min(wanted, physical - kLeftForTheSystem));
}

std::optional<std::string> wired_limit_warning(const std::string& what, std::uint64_t mlx_bytes,
                                               const WiredLimitView& view, std::uint64_t physical) {
    if (!view.applies || mlx_bytes <= view.bytes) return std::nullopt;
    std::string text = what + ": " + format_bytes(mlx_bytes) +
                       " of MLX models, more than the GPU wired limit of " +
                       format_bytes(view.bytes) + " (" + view.source +
                       "): they would be paged instead of kept in GPU memory. ";
    if (physical > kLeftForTheSystem && mlx_bytes > physical - kLeftForTheSystem) {
        return text + "They do not fit in this machine's " + format_bytes(physical) +
               " with 8 GiB left for the system: use fewer or smaller models";
    }
    const auto mb = suggested_wired_limit_mb(mlx_bytes, physical);
    return text + "Raise it: '" + wired_limit_command(mb) +
           "', and set supervisor.gpu_wired_limit: " + std::to_string(mb) +
           "MiB and run deploy/install-wired-limit, so that it is set again at every boot";
}

}  // namespace ensemble
