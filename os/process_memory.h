// The memory a process really uses, in a measure that adds up across a worker and its engine:
// Linux: proportional set size (shared pages divided among the processes sharing them, from
// /proc/PID/smaps_rollup); macOS: phys_footprint (what Activity Monitor shows as "Memory":
// resident plus compressed, unified-memory GPU allocations of MLX and Metal included).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>

namespace ensemble {

// Bytes; nullopt if unknown or the process is gone.
std::optional<std::uint64_t> process_footprint(pid_t pid);

// How many bytes of `file` are resident in `pid`'s mappings of it (llama.cpp maps a GGUF and
// reads its weights from the mapping): nullopt when the process maps no part of the file or
// cannot be inspected. Linux: the Rss of its mappings in /proc/PID/smaps; macOS: the resident
// pages of its regions backed by the file's vnode (PROC_PIDREGIONPATHINFO).
std::optional<std::uint64_t> mapped_file_resident_bytes(pid_t pid,
                                                        const std::filesystem::path& file);

}  // namespace ensemble
