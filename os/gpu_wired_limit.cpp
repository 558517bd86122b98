#include "os/gpu_wired_limit.h"

namespace ensemble {

std::uint64_t default_wired_limit_bytes(std::uint64_t physical) {
    return physical / 100 * kDefaultWiredPercent;
}

std::string wired_limit_command(std::uint64_t mb) {
    return "sudo sysctl iogpu.wired_limit_mb=" + std::to_string(mb);
}

}  // namespace ensemble
