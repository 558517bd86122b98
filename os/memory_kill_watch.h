// Tells a SIGKILL that memory trouble caused apart from any other, so an operator reads the
// real reason: the kernel's OOM killer (Linux: the memory cgroup's OOM-kill count rose since the
// last look), or a kill under critical memory pressure (macOS's jetsam kills with a plain
// SIGKILL; on Linux, systemd-oomd and earlyoom do the same). The pressure is sampled regularly:
// it passes, and the kill that relieves it is often seen a moment later.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "os/asio.h"
#include "os/memory_pressure.h"

namespace ensemble {

class MemoryKillWatch {
  public:
    using Clock = std::chrono::steady_clock;
    // A SIGKILL this soon after a critical reading is put down to the pressure.
    static constexpr auto kPressureMemory = std::chrono::seconds(10);

    MemoryKillWatch();
    // Samples the pressure every `interval` on `io` until this watch is destroyed.
    void watch(asio::io_context& io, std::chrono::milliseconds interval);
    void sample();

    // For a SIGKILL just seen: " by the kernel's OOM killer (...)", " under critical memory
    // pressure (likely jetsam)", or "" when the OS shows no memory trouble behind it.
    std::string explain_sigkill();

  private:
    void schedule(std::chrono::milliseconds interval);

    std::optional<std::uint64_t> oom_kills_;
    Clock::time_point last_critical_{};
    std::optional<asio::steady_timer> timer_;
};

}  // namespace ensemble
