#include "os/cpu_features.h"

namespace ensemble {

bool cpu_has_amx() {
    return false;  // Apple silicon has no AMX in Intel's sense, nor had Intel Macs
}

}  // namespace ensemble
