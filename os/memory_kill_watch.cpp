#include "os/memory_kill_watch.h"

namespace ensemble {

MemoryKillWatch::MemoryKillWatch() : oom_kills_(oom_kill_count()) {
    sample();
}

void MemoryKillWatch::watch(asio::io_context& io, std::chrono::milliseconds interval) {
    timer_.emplace(io);
    schedule(interval);
}

void MemoryKillWatch::schedule(std::chrono::milliseconds interval) {
    timer_->expires_after(interval);
    // Cancelled when the timer is destroyed with this watch; a handler already queued by then
    // finds `alive` false.
    timer_->async_wait([this, alive = alive_, interval](boost::system::error_code ec) {
        if (ec || !*alive) return;
        sample();
        schedule(interval);
    });
}

void MemoryKillWatch::sample() {
    if (memory_pressure() == MemoryPressure::critical) last_critical_ = Clock::now();
}

std::string MemoryKillWatch::explain_sigkill() {
    const auto count = oom_kill_count();
    const bool oom_killer = count && oom_kills_ && *count > *oom_kills_;
    if (count) oom_kills_ = count;
    if (oom_killer) return " by the kernel's OOM killer (the memory cgroup's oom_kill count rose)";
    sample();
    if (last_critical_ != Clock::time_point{} && Clock::now() - last_critical_ <= kPressureMemory)
        return kPressureKill;
    return "";
}

}  // namespace ensemble
