#include "os/memory_limits.h"

namespace ensemble {

std::uint64_t budgetable_memory() {
    const auto physical = physical_memory();
    const auto limit = memory_limit();
    return limit && (*limit < physical || physical == 0) ? *limit : physical;
}

}  // namespace ensemble
