// The path of the running executable, to find the binaries installed beside it
// (Linux: /proc/self/exe; macOS: _NSGetExecutablePath, symlinks resolved).
#pragma once

#include <filesystem>

#include "protocol/result.h"

namespace ensemble {

Result<std::filesystem::path> executable_path();

}  // namespace ensemble
