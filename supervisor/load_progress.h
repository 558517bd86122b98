// How far a worker's engine has loaded its model, from the worker's heartbeats, whatever the
// engine: the resident share of the model file's mapping when the worker sees one (a GGUF under
// llama.cpp), otherwise the memory the worker and engine measure against the port's estimate
// (an MLX model, vLLM). Never 100 % before the engine is ready; the time left extrapolates the
// rate since the load was first seen moving.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "protocol/messages.h"

namespace ensemble {

struct LoadProgress {
    std::uint64_t done_bytes = 0;
    std::uint64_t total_bytes = 0;
    double fraction = 0;  // at most kMaxLoadFraction
    // Seconds left at the rate so far; nullopt until the load has been seen moving, and once
    // every byte is there (what the engine does then, no byte count tells).
    std::optional<double> eta_s;
    std::string measure;  // "mapping" (the model file) or "memory" (against the estimate)
};

// Until the engine says it is ready, progress stops short of the whole: the last pages of a
// mapping, or the last allocations, are not the end of a load.
inline constexpr double kMaxLoadFraction = 0.99;

// One worker run's load.
class LoadTracker {
  public:
    using Clock = std::chrono::steady_clock;

    // A heartbeat while the engine loads; `estimate_bytes` 0 when there is no estimate.
    void observe(const protocol::WorkerStats& stats, std::uint64_t estimate_bytes,
                 Clock::time_point now);
    void reset() { *this = LoadTracker{}; }

    const std::optional<LoadProgress>& progress() const { return progress_; }
    // The quarter (25, 50 or 75 %) the last observation crossed, for an event; 0 when none.
    int crossed_quarter() const { return crossed_; }

  private:
    std::optional<LoadProgress> progress_;
    // The first observation with bytes done, the origin of the rate.
    std::optional<std::pair<Clock::time_point, std::uint64_t>> origin_;
    int quarters_ = 0;  // reached so far
    int crossed_ = 0;
};

// "41 % (105.0 MiB of 256.6 MiB of the model file resident), about 3 s left"
std::string describe(const LoadProgress& progress);

}  // namespace ensemble
