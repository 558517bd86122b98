// Reading a whole file in a test: its logs, units, plists and /proc entries.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace ensemble::testing {

// The file's bytes, or "" when it cannot be opened (a test then fails on what it expected).
inline std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace ensemble::testing
