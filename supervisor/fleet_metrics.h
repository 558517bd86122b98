// ensembled's GET /metrics: the whole fleet in Prometheus's text format, per port (state,
// model, memory estimate and measure, restarts, requests, tokens) and the memory budget. Made
// from the same FleetStatus value as `ensemble status`: one source for both.
#pragma once

#include <string>

#include "supervisor/fleet.h"

namespace ensemble {

// What the status listener adds about itself.
struct ListenerGauges {
    std::size_t connections = 0;
    std::size_t streams = 0;  // /api/events subscribers
};

std::string fleet_metrics(const FleetStatus& status, const ListenerGauges& listener);

}  // namespace ensemble
