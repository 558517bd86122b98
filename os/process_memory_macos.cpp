#include <libproc.h>
#include <sys/resource.h>

#include "os/process_memory.h"

namespace ensemble {

std::optional<std::uint64_t> process_footprint(pid_t pid) {
    rusage_info_v4 info{};
    if (proc_pid_rusage(pid, RUSAGE_INFO_V4, reinterpret_cast<rusage_info_t*>(&info)) != 0)
        return std::nullopt;
    return info.ri_phys_footprint;
}

}  // namespace ensemble
