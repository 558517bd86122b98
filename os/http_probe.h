// One HTTP request with a deadline, for health and readiness probes: the worker probes its
// engine (on its private socket or loopback port) with the preset's method, path and body; the
// supervisor probes workers' public ports with GET /health. A probe that could not even be made for
// want of the prober's own resources (descriptors, memory, local ports) says so: that is never the
// probed one's fault.
#pragma once

#include <chrono>
#include <string>

#include "os/asio.h"
#include "os/stream_endpoint.h"

namespace ensemble {

struct HttpProbe {
    std::string method = "GET";
    std::string path = "/health";
    std::string body;  // sent as application/json when not empty
};

struct ProbeResult {
    int status = 0;           // the HTTP status; 0 if nothing answered in time
    std::string own_trouble;  // set when the probe could not be made on our side, and why

    bool ok() const { return status == 200; }
};

awaitable<ProbeResult> http_probe(const StreamEndpoint& endpoint, const HttpProbe& probe,
                                  std::chrono::milliseconds timeout);

}  // namespace ensemble
