#include "supervisor/load_progress.h"

#include <algorithm>
#include <cmath>

#include "supervisor/memory_budget.h"

namespace ensemble {

void LoadTracker::observe(const protocol::WorkerStats& stats, std::uint64_t estimate_bytes,
                          Clock::time_point now) {
    crossed_ = 0;
    LoadProgress p;
    if (stats.load_file_bytes > 0) {
        p.measure = "mapping";
        p.done_bytes = stats.load_mapped_bytes;
        p.total_bytes = stats.load_file_bytes;
    } else if (estimate_bytes > 0 && stats.engine_pid != 0) {
        p.measure = "memory";
        p.done_bytes = std::min(stats.memory_bytes, estimate_bytes);
        p.total_bytes = estimate_bytes;
    } else {
        progress_.reset();  // no engine yet, or nothing to measure it against
        return;
    }
    // A measure that switches (the mapping appears) starts the rate afresh.
    if (progress_ && progress_->measure != p.measure) origin_.reset();
    p.fraction = std::min(kMaxLoadFraction,
                          static_cast<double>(p.done_bytes) / static_cast<double>(p.total_bytes));
    if (!origin_ && p.done_bytes > 0) origin_.emplace(now, p.done_bytes);
    // Once all is read (or allocated) the rate says nothing of what is left — llama.cpp's
    // buffers and warm-up took 70 % of a cold 2 GB load here (docs/BENCHMARKS.md) — so no time
    // is promised then.
    if (origin_ && p.done_bytes > origin_->second && p.fraction < kMaxLoadFraction) {
        const double seconds = std::chrono::duration<double>(now - origin_->first).count();
        const double rate = static_cast<double>(p.done_bytes - origin_->second) / seconds;
        if (seconds > 0 && rate > 0) {
            const auto left = p.total_bytes > p.done_bytes ? p.total_bytes - p.done_bytes : 0;
            p.eta_s = static_cast<double>(left) / rate;
        }
    }
    const int quarters = std::min(3, static_cast<int>(std::floor(p.fraction * 4)));
    if (quarters > quarters_) {
        crossed_ = quarters * 25;
        quarters_ = quarters;
    }
    progress_ = p;
}

std::string describe(const LoadProgress& p) {
    std::string text = std::to_string(static_cast<int>(p.fraction * 100)) + " % (" +
                       format_bytes(p.done_bytes) + " of " + format_bytes(p.total_bytes) +
                       (p.measure == "mapping" ? " of the model file resident"
                                               : " of the estimated memory in use") +
                       ")";
    if (p.eta_s)
        text += ", about " + std::to_string(static_cast<long>(std::ceil(*p.eta_s))) + " s left";
    return text;
}

}  // namespace ensemble
