// The memory a process really uses, in a measure that adds up across a worker and its engine:
// Linux: proportional set size (shared pages divided among the processes sharing them, from
// /proc/PID/smaps_rollup); macOS: phys_footprint (what Activity Monitor shows as "Memory":
// resident plus compressed, unified-memory GPU allocations of MLX and Metal included).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace ensemble {

// Bytes; nullopt if unknown or the process is gone.
std::optional<std::uint64_t> process_footprint(pid_t pid);

}  // namespace ensemble
