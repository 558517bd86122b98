#include "os/gpu_wired_limit.h"

namespace ensemble {

Result<GpuWiredLimit> gpu_wired_limit() {
    return GpuWiredLimit{};  // GPU memory on Linux is the device's own, not wired system memory
}

}  // namespace ensemble
