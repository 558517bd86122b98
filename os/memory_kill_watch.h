// Tells a SIGKILL that memory trouble caused apart from any other, so an operator reads the
// real reason: the kernel's OOM killer (Linux: the memory cgroup's OOM-kill count rose since the
// last look), or a kill under critical memory pressure (macOS's jetsam kills with a plain
// SIGKILL; on Linux, systemd-oomd and earlyoom do the same). The pressure is sampled regularly:
// it passes, and the kill that relieves it is often seen a moment later.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "os/asio.h"
#include "os/memory_pressure.h"

namespace ensemble {

// What a SIGKILL under critical memory pressure is reported as: macOS kills with jetsam; on
// Linux a user-space out-of-memory killer (systemd-oomd, earlyoom) does the same.
#ifdef __APPLE__
inline constexpr const char* kPressureKill = " under critical memory pressure (likely jetsam)";
#else
inline constexpr const char* kPressureKill =
    " under critical memory pressure (likely an out-of-memory killer such as systemd-oomd)";
#endif

class MemoryKillWatch {
  public:
    using Clock = std::chrono::steady_clock;
    // A SIGKILL this soon after a critical reading is put down to the pressure.
    static constexpr auto kPressureMemory = std::chrono::seconds(10);

    MemoryKillWatch();
    // Samples the pressure every `interval` on `io` until this watch is destroyed.
    void watch(asio::io_context& io, std::chrono::milliseconds interval);
    void sample();

    // For a SIGKILL nobody here sent: " by the kernel's OOM killer (...)", kPressureKill, or ""
    // when the OS shows no memory trouble behind it.
    std::string explain_sigkill();

  private:
    void schedule(std::chrono::milliseconds interval);

    std::optional<std::uint64_t> oom_kills_;
    Clock::time_point last_critical_{};
    std::optional<steady_timer> timer_;
    // False once this watch is gone: a timer handler already queued must not touch it.
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  public:
    ~MemoryKillWatch() { *alive_ = false; }
    MemoryKillWatch(const MemoryKillWatch&) = delete;
    MemoryKillWatch& operator=(const MemoryKillWatch&) = delete;
};

}  // namespace ensemble
