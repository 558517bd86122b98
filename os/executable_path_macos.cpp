#include <mach-o/dyld.h>

#include <cstdint>
#include <string>
#include <vector>

#include "os/executable_path.h"

namespace ensemble {

Result<std::filesystem::path> executable_path() {
    std::uint32_t size = 0;
    _NSGetExecutablePath(nullptr, &size);  // asks for the size it needs
    std::vector<char> buffer(size + 1, '\0');
    if (_NSGetExecutablePath(buffer.data(), &size) != 0)
        return Error{"executable_path", "_NSGetExecutablePath failed"};
    std::error_code ec;
    auto path = std::filesystem::canonical(buffer.data(), ec);
    if (ec) {
        return Error{"executable_path",
                     "cannot resolve " + std::string(buffer.data()) + ": " + ec.message()};
    }
    return path;
}

}  // namespace ensemble
