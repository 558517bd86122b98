#include "os/executable_path.h"

namespace ensemble {

Result<std::filesystem::path> executable_path() {
    std::error_code ec;
    auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return Error{"executable_path", "cannot read /proc/self/exe: " + ec.message()};
    return path;
}

}  // namespace ensemble
