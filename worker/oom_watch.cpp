#include "worker/oom_watch.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace ensemble {

namespace {

std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

// The file that counts OOM kills for the memory cgroup named in /proc/self/cgroup.
std::filesystem::path oom_counter_file() {
    std::istringstream lines(read_text("/proc/self/cgroup"));
    std::string line;
    while (std::getline(lines, line)) {
        // "hierarchy-id:controllers:path"; v2 is "0::path".
        const auto first = line.find(':');
        const auto second = line.find(':', first + 1);
        if (first == std::string::npos || second == std::string::npos) continue;
        const auto controllers = "," + line.substr(first + 1, second - first - 1) + ",";
        const auto path = line.substr(second + 1);
        if (controllers == ",,") {
            const auto v2 =
                std::filesystem::path("/sys/fs/cgroup") / path.substr(1) / "memory.events";
            if (std::filesystem::exists(v2)) return v2;
        } else if (controllers.find(",memory,") != std::string::npos) {
            return std::filesystem::path("/sys/fs/cgroup/memory") / path.substr(1) /
                   "memory.oom_control";
        }
    }
    return {};
}

}  // namespace

std::optional<std::uint64_t> parse_oom_kill_count(const std::string& text) {
    std::istringstream lines(text);
    std::string key;
    std::uint64_t value = 0;
    while (lines >> key >> value) {
        if (key == "oom_kill") return value;
    }
    return std::nullopt;
}

std::optional<std::uint64_t> cgroup_oom_kills() {
    const auto file = oom_counter_file();
    if (file.empty()) return std::nullopt;
    return parse_oom_kill_count(read_text(file));
}

bool OomWatch::oom_kill_since_last_check() {
    const auto now = cgroup_oom_kills();
    const bool went_up = now && seen_ && *now > *seen_;
    if (now) seen_ = now;
    return went_up;
}

}  // namespace ensemble
