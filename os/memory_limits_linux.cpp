#include <unistd.h>

#include "os/memory_cgroup.h"
#include "os/memory_limits.h"
#include "os/portable_mode.h"

namespace ensemble {

std::uint64_t physical_memory() {
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page_size <= 0) return 0;
    return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
}

std::optional<std::uint64_t> memory_limit() {
    if (portable_mode()) return std::nullopt;
    return cgroup_memory_limit();
}

}  // namespace ensemble
