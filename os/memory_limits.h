// How much memory this machine has, and how much of it this service may use: what a percentage
// memory budget ("85%") is a share of.
#pragma once

#include <cstdint>
#include <optional>

namespace ensemble {

// Physical memory in bytes (Linux: sysconf; macOS: hw.memsize); 0 if unknown.
std::uint64_t physical_memory();

// The limit a container or service manager sets on this process's memory (Linux: the memory
// cgroup's, e.g. a unit's MemoryMax=; never in portable mode; macOS has none); nullopt when
// unlimited or unknown.
std::optional<std::uint64_t> memory_limit();

// Physical memory, or the limit when that is lower.
std::uint64_t budgetable_memory();

}  // namespace ensemble
