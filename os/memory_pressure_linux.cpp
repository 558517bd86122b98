#include "os/memory_cgroup.h"
#include "os/memory_pressure.h"
#include "os/portable_mode.h"

namespace ensemble {

MemoryPressure system_memory_pressure() {
    if (!portable_mode()) {
        if (const auto group = memory_cgroup(); group.v2) {
            const auto text = read_small_file(group.dir / "memory.pressure");
            if (!text.empty()) return pressure_from_psi(text);
        }
    }
    return pressure_from_psi(read_small_file("/proc/pressure/memory"));
}

std::optional<std::uint64_t> oom_kill_count() {
    if (portable_mode()) return std::nullopt;
    return cgroup_oom_kills();
}

}  // namespace ensemble
