#include "worker/oom_watch.h"

#include <filesystem>
#include <sstream>

#include "worker/memory_cgroup.h"

namespace ensemble {

namespace {

// The file that counts OOM kills for this process's memory cgroup.
std::filesystem::path oom_counter_file() {
    const auto group = memory_cgroup();
    if (group.dir.empty()) return {};
    return group.dir / (group.v2 ? "memory.events" : "memory.oom_control");
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
    return parse_oom_kill_count(read_small_file(file));
}

bool OomWatch::oom_kill_since_last_check() {
    const auto now = cgroup_oom_kills();
    const bool went_up = now && seen_ && *now > *seen_;
    if (now) seen_ = now;
    return went_up;
}

}  // namespace ensemble
