// The memory a process really uses: its proportional set size (shared pages divided among the
// processes sharing them), which adds up correctly across a worker and its engine.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace ensemble {

// PSS in bytes (Linux: /proc/PID/smaps_rollup; macOS: phys_footprint from proc_pid_rusage);
// nullopt if unknown or the process is gone.
std::optional<std::uint64_t> proportional_set_size(pid_t pid);

// Start time of a process in clock ticks since boot (/proc/PID/stat field 22), to tell a pid
// from a later process that reused it; nullopt if the process is gone.
std::optional<std::int64_t> process_start_time(pid_t pid);

}  // namespace ensemble
