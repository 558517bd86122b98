#include "os/log_rotation.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace ensemble {

namespace {

std::filesystem::path numbered(const std::filesystem::path& path, int n) {
    return path.string() + "." + std::to_string(n);
}

}  // namespace

Result<bool> rotate_if_larger(const std::filesystem::path& path, std::uint64_t max_bytes,
                              int keep) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec || size <= max_bytes) return false;
    std::filesystem::remove(numbered(path, keep), ec);
    for (int n = keep - 1; n >= 1; --n) {
        if (std::filesystem::exists(numbered(path, n), ec))
            std::filesystem::rename(numbered(path, n), numbered(path, n + 1), ec);
    }
    std::filesystem::copy_file(path, numbered(path, 1),
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
        return Error{"log_rotate", "cannot copy " + path.string() + " to " +
                                       numbered(path, 1).string() + ": " + ec.message() +
                                       "; the log keeps growing (is the disk full?)"};
    }
    if (::truncate(path.c_str(), 0) != 0) {
        return Error{"log_rotate", "cannot truncate " + path.string() + ": " +
                                       std::strerror(errno) + "; the log keeps growing"};
    }
    return true;
}

}  // namespace ensemble
