#include "os/gpu_wired_limit.h"

namespace ensemble {

std::uint64_t default_wired_limit_bytes(std::uint64_t physical) {
    return physical / 100 * kDefaultWiredPercent;
}

std::uint64_t wired_limit_mb(std::uint64_t bytes) {
    constexpr std::uint64_t kMiB = 1ULL << 20;
    return bytes / kMiB + (bytes % kMiB != 0 ? 1 : 0);
}

std::string wired_limit_command(std::uint64_t mb) {
    return "sudo sysctl iogpu.wired_limit_mb=" + std::to_string(mb);
}

}  // namespace ensemble
