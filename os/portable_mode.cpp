#include "os/portable_mode.h"

#include <cstdlib>
#include <cstring>

namespace ensemble {

bool portable_mode() {
#ifdef __APPLE__
    return true;
#else
    static const bool enabled = [] {
        const char* value = std::getenv(kPortableModeVariable);
        return value != nullptr && std::strcmp(value, "1") == 0;
    }();
    return enabled;
#endif
}

}  // namespace ensemble
