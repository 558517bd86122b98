// Linux only: the memory cgroup this process runs in (under systemd, the service's: it holds the
// supervisor, its workers and their engines) — where its files are, the limit it sets and the
// OOM kills it counts. The portable headers (memory_limits.h, memory_pressure.h) are built on it;
// in portable mode nothing reads it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ensemble {

struct MemoryCgroup {
    std::filesystem::path dir;  // empty when there is none
    bool v2 = false;            // unified hierarchy (memory.max, memory.events)
};

// From /proc/self/cgroup: the v2 group if it has memory files, else the v1 memory controller's.
MemoryCgroup memory_cgroup();

// The group's memory limit (v2 memory.max, v1 memory.limit_in_bytes); nullopt when unlimited
// or unreadable.
std::optional<std::uint64_t> cgroup_memory_limit();

// OOM kills the group counted so far (v2 memory.events, v1 memory.oom_control).
std::optional<std::uint64_t> cgroup_oom_kills();

// A small text file's contents, "" when unreadable (kernel files: at most a few KiB).
std::string read_small_file(const std::filesystem::path& path);

}  // namespace ensemble
