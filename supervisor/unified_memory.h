// The GPU wired limit of Apple Silicon against the MLX models that need it. Every mlx_lm.server
// raises its own wired limit to the system's maximum, so MLX models that together pass that
// maximum are paged in and out instead of staying wired: slow, though nothing fails. What the
// limit is here, what MLX ports hold, and the warning with the command that fixes it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "os/gpu_wired_limit.h"
#include "profiles/config.h"

namespace ensemble {

struct WiredLimitView {
    bool applies = false;     // macOS, or a config that sets gpu_wired_limit
    std::uint64_t bytes = 0;  // the limit in force (or, with nothing else to go by, configured)
    std::string source;       // where `bytes` comes from, for people
    std::optional<std::uint64_t> configured_bytes;  // supervisor.gpu_wired_limit
    std::optional<std::uint64_t> sysctl_mb;         // iogpu.wired_limit_mb now (macOS)
    std::string problem;  // set when the limit cannot be read, or differs from the config
};

// `system` is what the OS says (os/gpu_wired_limit.h); `physical`, hw.memsize. At boot the
// configured limit is the one in force (deploy/install applies it), so `at_boot` prefers it.
WiredLimitView wired_limit_view(const Config& config, const Result<GpuWiredLimit>& system,
                                std::uint64_t physical, bool at_boot);

// Whether `handle` is served by mlx_lm.server (its weights are wired GPU memory).
bool is_mlx_model(const Config& config, const std::string& handle);

// When `mlx_bytes` of MLX models (`what`: "profile 'studio'", "the running ports") pass
// the limit: the warning, with the limit to set and the sysctl command; nullopt when they fit.
// `physical` is the Mac's memory, or 0 when checking from another machine (no cap then).
std::optional<std::string> wired_limit_warning(const std::string& what, std::uint64_t mlx_bytes,
                                               const WiredLimitView& view, std::uint64_t physical);

// What to set for `mlx_bytes` of models: 10 % above them, leaving the system at least 8 GiB
// of `physical` (0: unknown).
std::uint64_t suggested_wired_limit_mb(std::uint64_t mlx_bytes, std::uint64_t physical);

}  // namespace ensemble
