#include "os/memory_cgroup.h"

#include <fstream>
#include <sstream>

#include "os/memory_pressure.h"

namespace ensemble {

namespace {

// v1 reports "unlimited" as a page-rounded maximum; anything this large means no limit.
constexpr std::uint64_t kUnlimited = 1ULL << 62;
constexpr std::streamsize kMaxKernelFile = 64 * 1024;

}  // namespace

std::string read_small_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) return {};
    std::string text(static_cast<std::size_t>(kMaxKernelFile), '\0');
    in.read(text.data(), kMaxKernelFile);
    text.resize(static_cast<std::size_t>(in.gcount()));
    return text;
}

MemoryCgroup memory_cgroup() {
    std::istringstream lines(read_small_file("/proc/self/cgroup"));
    std::string line;
    while (std::getline(lines, line)) {
        // "hierarchy-id:controllers:path"; v2 is "0::path".
        const auto first = line.find(':');
        const auto second = line.find(':', first + 1);
        if (first == std::string::npos || second == std::string::npos) continue;
        const auto controllers = "," + line.substr(first + 1, second - first - 1) + ",";
        const auto path = line.substr(second + 1);
        if (controllers == ",,") {
            const auto v2 = std::filesystem::path("/sys/fs/cgroup") / path.substr(1);
            if (std::filesystem::exists(v2 / "memory.events")) return {v2, true};
        } else if (controllers.find(",memory,") != std::string::npos) {
            return {std::filesystem::path("/sys/fs/cgroup/memory") / path.substr(1), false};
        }
    }
    return {};
}

std::optional<std::uint64_t> cgroup_memory_limit() {
    const auto group = memory_cgroup();
    if (group.dir.empty()) return std::nullopt;
    const auto text =
        read_small_file(group.dir / (group.v2 ? "memory.max" : "memory.limit_in_bytes"));
    std::uint64_t limit = 0;
    std::istringstream in(text);
    if (!(in >> limit) || limit == 0 || limit >= kUnlimited) return std::nullopt;  // "max"
    return limit;
}

std::optional<std::uint64_t> cgroup_oom_kills() {
    const auto group = memory_cgroup();
    if (group.dir.empty()) return std::nullopt;
    return parse_oom_kill_count(
        read_small_file(group.dir / (group.v2 ? "memory.events" : "memory.oom_control")));
}

}  // namespace ensemble
