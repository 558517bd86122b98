// Linux: a process's start time is field 22 of /proc/PID/stat, in clock ticks since boot.
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "os/process_identity.h"

namespace ensemble {

namespace {

// The fields of /proc/PID/stat after the command name (field 2, which may hold spaces and
// parentheses: everything up to the last ')'), starting with field 3, the state.
Result<std::vector<std::string>> stat_fields(pid_t pid) {
    const auto path = "/proc/" + std::to_string(pid) + "/stat";
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    std::array<char, 1024> buffer{};  // a stat line is ~300 bytes; a command name at most 64
    const auto n = fd < 0 ? -1 : ::read(fd, buffer.data(), buffer.size() - 1);
    const int error = errno;
    if (fd >= 0) ::close(fd);
    if (n < 0 && (error == ENOENT || error == ESRCH))
        return Error{"gone", "no process has pid " + std::to_string(pid)};
    if (n <= 0) {
        return Error{"unreadable", "cannot read " + path + ": " +
                                       (n == 0 ? std::string("empty") : std::strerror(error))};
    }
    const std::string line(buffer.data(), static_cast<std::size_t>(n));
    const auto close = line.rfind(')');
    if (close == std::string::npos || close + 2 >= line.size())
        return Error{"unreadable", "cannot parse " + path + " (no command name)"};
    std::istringstream words(line.substr(close + 2));
    std::vector<std::string> fields;
    for (std::string field; words >> field;)
        fields.push_back(field);
    return fields;
}

bool exited(const std::vector<std::string>& fields) {
    return !fields.empty() && (fields[0] == "Z" || fields[0] == "X");
}

}  // namespace

Result<ProcessIdentity> identify_process(pid_t pid) {
    auto fields = stat_fields(pid);
    if (!fields) return fields.error();
    if (exited(*fields))
        return Error{"gone", "pid " + std::to_string(pid) + " has exited (a zombie)"};
    constexpr std::size_t kStartTime = 22 - 3;  // field 22, counted from field 3
    std::int64_t start = 0;
    if (fields->size() <= kStartTime ||
        (start = std::strtoll((*fields)[kStartTime].c_str(), nullptr, 10)) <= 0) {
        return Error{"unreadable", "cannot parse the start time (field 22) of /proc/" +
                                       std::to_string(pid) + "/stat"};
    }
    return ProcessIdentity{pid, start};
}

bool process_group_has_members(pid_t group) {
    constexpr std::size_t kGroup = 5 - 3;  // field 5, counted from field 3
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const auto name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        auto fields = stat_fields(static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10)));
        if (fields && !exited(*fields) && fields->size() > kGroup &&
            std::strtoll((*fields)[kGroup].c_str(), nullptr, 10) == group)
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
