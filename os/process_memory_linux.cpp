#include <fstream>
#include <sstream>
#include <string>

#include "os/process_memory.h"

namespace ensemble {

std::optional<std::uint64_t> process_footprint(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("Pss:", 0) == 0) {
            std::istringstream fields(line.substr(4));
            std::uint64_t kib = 0;
            if (fields >> kib) return kib * 1024;
        }
    }
    return std::nullopt;
}

}  // namespace ensemble
