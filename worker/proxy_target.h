// What the proxy forwards to: the worker's own engine (engine_runner.h), or, for the front door,
// the public port of the worker serving the model a request names (front_door.h). The proxy asks
// it where it listens, whether it is ready, and to wait until it is.
#pragma once

#include <chrono>
#include <cstdint>

#include "os/asio.h"
#include "os/stream_endpoint.h"
#include "worker/openai_error.h"

namespace ensemble {

class ProxyTarget {
  public:
    using Clock = std::chrono::steady_clock;
    virtual ~ProxyTarget() = default;

    virtual bool ready() const = 0;
    // Waits until it is ready (true) or the deadline passes / it is going away (false).
    virtual awaitable<bool> wait_ready(Clock::time_point deadline) = 0;
    virtual const StreamEndpoint& endpoint() const = 0;
    // Changes whenever what listens at the endpoint changes: pooled connections to an older
    // one are not reused.
    virtual std::uint64_t generation() const = 0;
    // A connection was refused or reset: the target may have just died (a chance to notice it
    // at once rather than at the next signal).
    virtual void on_child_exit() = 0;
    // It answered a real request (passive health).
    virtual void note_answer() = 0;
    // Why a request could not be forwarded after waiting and retrying.
    virtual ApiError unavailable() const = 0;
};

}  // namespace ensemble
