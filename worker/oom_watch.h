// Tells a SIGKILL from the kernel's OOM killer apart from any other: the memory cgroup this
// process runs in counts OOM kills (cgroup v2 memory.events, v1 memory.oom_control), and a kill
// that arrives with the count gone up was the OOM killer's. Under systemd that cgroup is the
// service's, which holds the supervisor, its workers and their engines.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ensemble {

// The "oom_kill N" count in a memory.events or memory.oom_control text.
std::optional<std::uint64_t> parse_oom_kill_count(const std::string& text);

// OOM kills counted in this process's memory cgroup so far; nullopt where unreadable.
std::optional<std::uint64_t> cgroup_oom_kills();

class OomWatch {
  public:
    OomWatch() : seen_(cgroup_oom_kills()) {}
    // Whether the cgroup's OOM-kill count went up since the last call (or construction).
    bool oom_kill_since_last_check();

  private:
    std::optional<std::uint64_t> seen_;
};

}  // namespace ensemble
