// Linux: a process's start time is field 22 of /proc/PID/stat, in clock ticks since boot.
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "os/process_identity.h"

namespace ensemble {

Result<ProcessIdentity> identify_process(pid_t pid) {
    const auto path = "/proc/" + std::to_string(pid) + "/stat";
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    std::array<char, 1024> buffer{};  // a stat line is ~300 bytes; a command name at most 64
    const auto n = fd < 0 ? -1 : ::read(fd, buffer.data(), buffer.size() - 1);
    const int error = errno;
    if (fd >= 0) ::close(fd);
    if (n <= 0) {
        if (fd < 0 && error == ENOENT)
            return Error{"gone", "no process has pid " + std::to_string(pid)};
        if (n < 0 && error == ESRCH)
            return Error{"gone", "no process has pid " + std::to_string(pid)};
        return Error{"unreadable", "cannot read " + path + ": " +
                                       (n == 0 ? std::string("empty") : std::strerror(error))};
    }
    const std::string line(buffer.data(), static_cast<std::size_t>(n));
    // The command name (field 2) may hold spaces and parentheses: read past the last ')'.
    const auto close = line.rfind(')');
    if (close == std::string::npos || close + 2 >= line.size()) {
        return Error{"unreadable",
                     "cannot parse " + path + " (no command name in '" + line.substr(0, 80) + "')"};
    }
    std::istringstream fields(line.substr(close + 2));
    std::string state;
    fields >> state;
    if (state == "Z" || state == "X")
        return Error{"gone", "pid " + std::to_string(pid) + " has exited (a zombie)"};
    std::string field;
    for (int i = 4; i < 22 && fields >> field; ++i) {
    }
    std::int64_t start = 0;
    if (!(fields >> start) || start <= 0)
        return Error{"unreadable", "cannot parse the start time (field 22) of " + path};
    return ProcessIdentity{pid, start};
}

bool process_group_has_members(pid_t group) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const auto name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream in(entry.path() / "stat");
        std::string line;
        if (!std::getline(in, line)) continue;
        const auto close = line.rfind(')');
        if (close == std::string::npos || close + 2 >= line.size()) continue;
        std::istringstream fields(line.substr(close + 2));
        std::string state;
        long long parent = 0, member_group = 0;
        if (fields >> state >> parent >> member_group && member_group == group && state != "Z" &&
            state != "X")
            return true;
    }
    return false;
}

std::string boot_id() {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(in, id);
    return id;
}

}  // namespace ensemble
