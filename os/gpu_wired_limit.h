// The most unified memory the GPU may wire on Apple Silicon: sysctl iogpu.wired_limit_mb, where
// 0 means the system's default (Metal's recommendedMaxWorkingSetSize: about three quarters of
// RAM, 66-84 % measured across Macs and macOS versions). Every mlx_lm.server raises its own
// limit to that maximum at start, so MLX models that together pass it are paged instead of kept
// wired. The value does not survive a reboot (deploy/install can set it at boot). Linux has no
// such limit.
#pragma once

#include <cstdint>
#include <string>

#include "protocol/result.h"

namespace ensemble {

struct GpuWiredLimit {
    bool applies = false;  // false where there is no such limit (Linux)
    std::uint64_t mb = 0;  // iogpu.wired_limit_mb; 0: the system default
};

// Errors only where the limit applies but cannot be read; a Mac without it (Intel, macOS 13 and
// older) has none.
Result<GpuWiredLimit> gpu_wired_limit();

// Sets iogpu.wired_limit_mb (root only; until the next reboot). An error on Linux.
Status set_gpu_wired_limit(std::uint64_t mb);

// The system default when iogpu.wired_limit_mb is 0, as a share of physical memory: an
// approximation (the real value is Metal's and is not readable without it).
inline constexpr int kDefaultWiredPercent = 75;
std::uint64_t default_wired_limit_bytes(std::uint64_t physical);

// The command that sets it until the next reboot.
std::string wired_limit_command(std::uint64_t mb);

// A size as the sysctl's whole MiB, rounded up (so the limit is never below what was asked).
std::uint64_t wired_limit_mb(std::uint64_t bytes);

}  // namespace ensemble
