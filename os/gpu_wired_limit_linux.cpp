#include "os/gpu_wired_limit.h"

namespace ensemble {

Result<GpuWiredLimit> gpu_wired_limit() {
    return GpuWiredLimit{};  // GPU memory on Linux is the device's own, not wired system memory
}

Status set_gpu_wired_limit(std::uint64_t) {
    return Error{"wired_limit",
                 "there is no GPU wired limit on Linux: iogpu.wired_limit_mb is a macOS setting"};
}

}  // namespace ensemble
