// One HTTP readiness probe of an engine on loopback: the preset's method, path and body, with a
// deadline. Returns the HTTP status, or 0 if the engine did not answer.
#pragma once

#include <chrono>

#include "profiles/engine_preset.h"
#include "worker/asio.h"

namespace ensemble {

awaitable<int> probe_engine(unsigned short port, const ReadinessProbe& probe,
                            std::chrono::milliseconds timeout);

}  // namespace ensemble
