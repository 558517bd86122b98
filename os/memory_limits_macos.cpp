#include <sys/sysctl.h>

#include "os/memory_limits.h"

namespace ensemble {

std::uint64_t physical_memory() {
    std::uint64_t bytes = 0;
    std::size_t size = sizeof bytes;
    if (sysctlbyname("hw.memsize", &bytes, &size, nullptr, 0) != 0) return 0;
    return bytes;
}

std::optional<std::uint64_t> memory_limit() {
    return std::nullopt;  // no cgroups; launchd's limits are not memory budgets
}

}  // namespace ensemble
