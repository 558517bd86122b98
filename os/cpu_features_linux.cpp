#include "os/cpu_features.h"

#include <fstream>
#include <sstream>
#include <string>

namespace ensemble {

bool cpu_has_amx() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (!line.starts_with("flags")) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        bool amx_int8 = false;
        bool avx512_vnni = false;
        for (std::string flag; words >> flag;) {
            amx_int8 = amx_int8 || flag == "amx_int8";
            avx512_vnni = avx512_vnni || flag == "avx512_vnni";
        }
        return amx_int8 && avx512_vnni;  // (every core has the first core's flags)
    }
    return false;
}

}  // namespace ensemble
