#include "supervisor/restart_policy.h"

#include <algorithm>

namespace ensemble {

std::optional<std::chrono::milliseconds> RestartPolicy::on_failure(
    Clock::time_point now, std::optional<Clock::time_point> ready_since) {
    if (ready_since && now - *ready_since >= settings_.healthy_after) consecutive_ = 0;
    failures_.push_back(now);
    while (!failures_.empty() && now - failures_.front() > settings_.crash_loop_window)
        failures_.pop_front();
    if (static_cast<int>(failures_.size()) >= settings_.crash_loop_failures) return std::nullopt;
    // The first failure after a healthy run restarts at once (a one-off crash costs no more than
    // the reload); failures in a row back off from first_backoff, doubling.
    const int failures = consecutive_++;
    if (failures == 0) return std::chrono::milliseconds(0);
    const int doublings = std::min(failures - 1, 16);
    const std::chrono::milliseconds delay = settings_.first_backoff * (1LL << doublings);
    return std::min(delay, settings_.max_backoff);
}

void RestartPolicy::reset() {
    failures_.clear();
    consecutive_ = 0;
}

}  // namespace ensemble
