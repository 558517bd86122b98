// Decides when a failed port is restarted, and when it has failed too often to try again: the
// first failure restarts at once, then exponential backoff from 1 s doubling to a 60 s cap,
// reset after a healthy period; a crash
// loop (>= 5 failures within 5 minutes) puts the port in `failed` until an operator restarts it.
#pragma once

#include <chrono>
#include <deque>
#include <optional>

#include "profiles/config.h"

namespace ensemble {

class RestartPolicy {
  public:
    using Clock = std::chrono::steady_clock;
    explicit RestartPolicy(RestartSettings settings = {}) : settings_(settings) {}

    // Records a failure; returns the delay before the next start, or nullopt for a crash loop.
    // `ready_since`: when the run that failed became ready — none for a run that never did (a
    // failure at start); a run ready for `healthy_after` starts the backoff over.
    std::optional<std::chrono::milliseconds> on_failure(
        Clock::time_point now, std::optional<Clock::time_point> ready_since = std::nullopt);
    void reset();  // an operator restart

  private:
    RestartSettings settings_;
    std::deque<Clock::time_point> failures_;
    int consecutive_ = 0;
};

}  // namespace ensemble
