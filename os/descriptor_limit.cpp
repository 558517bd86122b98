#include "os/descriptor_limit.h"

#include <limits.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>

namespace ensemble {

namespace {

std::uint64_t soft(const rlimit& limit) {
    return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX
                                           : static_cast<std::uint64_t>(limit.rlim_cur);
}

}  // namespace

std::uint64_t descriptor_limit() {
    rlimit limit{};
    return ::getrlimit(RLIMIT_NOFILE, &limit) == 0 ? soft(limit) : 0;
}

std::uint64_t raise_descriptor_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    rlim_t wanted = limit.rlim_max;
#ifdef __APPLE__
    // macOS refuses a soft limit above OPEN_MAX even when the hard limit is unlimited.
    wanted = std::min<rlim_t>(wanted, OPEN_MAX);
#endif
    if (wanted > limit.rlim_cur) {
        rlimit raised = limit;
        raised.rlim_cur = wanted;
        if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    return soft(limit);
}

}  // namespace ensemble
