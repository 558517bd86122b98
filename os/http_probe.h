// One HTTP request with a deadline, for health and readiness probes: the worker probes its
// engine on loopback with the preset's method, path and body; the supervisor probes workers'
// public ports with GET /health. Returns the HTTP status, or 0 if nothing answered in time.
#pragma once

#include <chrono>
#include <string>

#include "os/asio.h"

namespace ensemble {

struct HttpProbe {
    std::string method = "GET";
    std::string path = "/health";
    std::string body;  // sent as application/json when not empty
};

awaitable<int> http_probe(asio::ip::address host, unsigned short port, const HttpProbe& probe,
                          std::chrono::milliseconds timeout);

}  // namespace ensemble
