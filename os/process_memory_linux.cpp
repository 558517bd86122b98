#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "os/process_memory.h"

namespace ensemble {

std::optional<std::uint64_t> process_footprint(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("Pss:", 0) == 0) {
            std::istringstream fields(line.substr(4));
            std::uint64_t kib = 0;
            if (fields >> kib) return kib * 1024;
        }
    }
    return std::nullopt;
}

std::optional<std::uint64_t> mapped_file_resident_bytes(pid_t pid,
                                                        const std::filesystem::path& file) {
    struct stat target {};
    if (::stat(file.c_str(), &target) != 0) return std::nullopt;
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
    bool found = false;
    bool in_file = false;  // the lines below the current mapping's header are the file's
    std::uint64_t resident_kib = 0;
    for (std::string line; std::getline(in, line);) {
        // A mapping's header: "start-end perms offset major:minor inode path".
        if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
            line.find('-') < line.find(' ')) {
            std::istringstream fields(line);
            std::string range, perms, offset, device;
            std::uint64_t inode = 0;
            fields >> range >> perms >> offset >> device >> inode;
            // By device and inode, not by path: smaps shows the resolved path, and a model is
            // often reached through a symlink (the Hugging Face cache's snapshots/).
            unsigned major = 0, minor = 0;
            const bool parsed = std::sscanf(device.c_str(), "%x:%x", &major, &minor) == 2;
            in_file = parsed && inode != 0 && inode == target.st_ino &&
                      makedev(major, minor) == target.st_dev;
            found = found || in_file;
        } else if (in_file && line.rfind("Rss:", 0) == 0) {
            std::istringstream fields(line.substr(4));
            std::uint64_t kib = 0;
            if (fields >> kib) resident_kib += kib;
        }
    }
    if (!found) return std::nullopt;
    return resident_kib * 1024;
}

}  // namespace ensemble
