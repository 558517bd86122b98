// A keep-alive load generator, like wrk but for TCP and Unix sockets alike: `connections`
// connections on one thread, each sending the same request back to back for a while. Used to
// compare paths (direct engine, nginx, worker) with exactly the same client cost on each.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "os/stream_endpoint.h"

namespace ensemble::bench {

struct LoadResult {
    std::vector<double> latencies_ms;  // one per completed request
    double seconds = 0;
    int errors = 0;  // non-200 answers, connections that failed or closed
    double requests_per_s() const {
        return seconds > 0 ? static_cast<double>(latencies_ms.size()) / seconds : 0;
    }
};

// Runs for `duration`; `request` is a complete HTTP/1.1 request (keep-alive) sent as is.
LoadResult run_keepalive_load(const StreamEndpoint& target, const std::string& request,
                              int connections, std::chrono::milliseconds duration);

// A POST of `body` to `target_path` as raw HTTP/1.1, keep-alive.
std::string raw_post(const std::string& target_path, const std::string& body);

double percentile(std::vector<double> values, double p);  // p in [0, 1]; 0 for none

}  // namespace ensemble::bench
