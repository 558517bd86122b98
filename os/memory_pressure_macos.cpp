#include <sys/sysctl.h>

#include <cstdint>

#include "os/memory_pressure.h"

namespace ensemble {

MemoryPressure system_memory_pressure() {
    std::uint32_t level = 0;  // CTLTYPE_INT; readable by any user on macOS
    std::size_t size = sizeof level;
    if (sysctlbyname("kern.memorystatus_vm_pressure_level", &level, &size, nullptr, 0) != 0)
        return MemoryPressure::unknown;
    return pressure_from_darwin_level(static_cast<long>(level));
}

std::optional<std::uint64_t> oom_kill_count() {
    return std::nullopt;
}

}  // namespace ensemble
