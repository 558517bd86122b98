// What a worker (and the front door) counts for its GET /metrics (Prometheus text): requests by
// route and status, the time to first token and the duration of proxied requests, prompt tokens.
// What is a state rather than a count (in flight, queued, the engine's state and restarts, memory,
// generated tokens) is the caller's, read when the page is asked for. Nothing here touches the
// engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "protocol/prometheus_text.h"

namespace ensemble {

struct WorkerGauges {
    std::string model;
    std::string engine_state;  // loading, ready, restarting, stopping, stopped
    bool draining = false;
    std::size_t in_flight = 0;
    std::size_t queued = 0;  // waiting for a restarting engine
    int engine_restarts = 0;
    std::uint64_t generated_tokens = 0;
    std::uint64_t worker_memory_bytes = 0;  // 0: unknown
    std::uint64_t engine_memory_bytes = 0;  // 0: unknown or no engine
};

class WorkerMetrics {
  public:
    using Duration = std::chrono::steady_clock::duration;

    WorkerMetrics();

    // Every request answered, with its target (the route label is one of a fixed few, so no
    // client can grow the page) and the status the client got.
    void answered(std::string_view target, unsigned status);
    // A proxied request: its duration, its time to first token when it was an event stream
    // whose first token was relayed, its prompt tokens when the answer said.
    void proxied(Duration duration, std::optional<Duration> first_token,
                 std::uint64_t prompt_tokens);

    std::string render(const WorkerGauges& gauges) const;
    // The families every listener has, named `prefix`_...: requests by route and status, in
    // flight, their time to first token and duration, prompt tokens. (The front door's page is
    // these and its own.)
    void write_requests(protocol::PrometheusText& out, std::string_view prefix,
                        std::size_t in_flight) const;

  private:
    std::map<std::pair<std::string_view, unsigned>, std::uint64_t> answered_;
    protocol::Histogram first_token_;
    protocol::Histogram duration_;
    std::uint64_t prompt_tokens_ = 0;
};

// The route label of a request target: the routes the worker knows, else "/v1/other" or "other".
std::string_view metrics_route(std::string_view target);

}  // namespace ensemble
