// The memory cgroup this process runs in (under systemd: the service's, holding the supervisor,
// its workers and their engines): where its files are, and the limit it sets.
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

std::string read_small_file(const std::filesystem::path& path);

}  // namespace ensemble
