#include <sys/sysctl.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "os/gpu_wired_limit.h"

namespace ensemble {

Result<GpuWiredLimit> gpu_wired_limit() {
    // Its width is undocumented (seen as a 4-byte int): read into 8 zeroed bytes, use what came.
    std::int64_t value = 0;
    std::size_t size = sizeof value;
    if (sysctlbyname("iogpu.wired_limit_mb", &value, &size, nullptr, 0) != 0) {
        if (errno == ENOENT) return GpuWiredLimit{};  // no such limit on this Mac
        return Error{"wired_limit",
                     std::string("cannot read sysctl iogpu.wired_limit_mb (macOS 14 or later on "
                                 "Apple Silicon): ") +
                         std::strerror(errno)};
    }
    if (size == sizeof(std::int32_t)) {
        std::int32_t narrow = 0;
        std::memcpy(&narrow, &value, sizeof narrow);
        value = narrow;
    }
    if (value < 0) return Error{"wired_limit", "iogpu.wired_limit_mb is negative"};
    return GpuWiredLimit{true, static_cast<std::uint64_t>(value)};
}

Status set_gpu_wired_limit(std::uint64_t mb) {
    if (mb > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()))
        return Error{"wired_limit", std::to_string(mb) + " MiB is more than any Mac has"};
    auto value = static_cast<std::int32_t>(mb);
    if (sysctlbyname("iogpu.wired_limit_mb", nullptr, nullptr, &value, sizeof value) != 0) {
        return Error{"wired_limit", std::string("cannot set sysctl iogpu.wired_limit_mb=") +
                                        std::to_string(mb) + ": " + std::strerror(errno) +
                                        (errno == EPERM ? " (run as root)" : "")};
    }
    return Ok{};
}

}  // namespace ensemble
