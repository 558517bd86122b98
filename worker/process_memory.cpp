#include "worker/process_memory.h"

#ifdef __APPLE__
#include <libproc.h>
#include <sys/resource.h>
#endif

#include <fstream>
#include <sstream>
#include <string>

namespace ensemble {

std::optional<std::uint64_t> proportional_set_size(pid_t pid) {
#ifdef __linux__
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("Pss:", 0) == 0) {
            std::istringstream fields(line.substr(4));
            std::uint64_t kib = 0;
            if (fields >> kib) return kib * 1024;
        }
    }
#elif defined(__APPLE__)
    // phys_footprint is what Activity Monitor shows as "Memory": resident plus compressed,
    // with unified-memory GPU allocations (MLX, Metal) included.
    rusage_info_v4 info{};
    if (proc_pid_rusage(pid, RUSAGE_INFO_V4, reinterpret_cast<rusage_info_t*>(&info)) == 0)
        return info.ri_phys_footprint;
#else
    (void)pid;
#endif
    return std::nullopt;
}

std::optional<std::int64_t> process_start_time(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return std::nullopt;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    const auto close = line.rfind(')');
    if (close == std::string::npos) return std::nullopt;
    std::istringstream fields(line.substr(close + 2));
    std::string field;
    for (int i = 3; i < 22 && fields >> field; ++i) {
    }
    std::int64_t start = 0;
    if (!(fields >> start)) return std::nullopt;
    return start;
}

}  // namespace ensemble
