// One HTTP readiness probe: the preset's method, path and body, with a deadline, to an engine
// on loopback (or any host: the supervisor probes workers' public ports the same way). Returns
// the HTTP status, or 0 if nothing answered in time.
#pragma once

#include <chrono>

#include "profiles/engine_preset.h"
#include "worker/asio.h"

namespace ensemble {

awaitable<int> probe_engine(unsigned short port, const ReadinessProbe& probe,
                            std::chrono::milliseconds timeout,
                            asio::ip::address host = asio::ip::address_v4::loopback());

}  // namespace ensemble
