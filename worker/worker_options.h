// ensemble-worker's command line: which port, which model, which engine, and the limits.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "protocol/result.h"
#include "worker/engine_config.h"
#include "worker/engine_proxy.h"
#include "worker/front_door.h"
#include "worker/http_front.h"
#include "worker/request_policy.h"

namespace ensemble {

struct WorkerOptions {
    FrontConfig front;
    EngineConfig engine;
    ProxyLimits proxy;
    ModelIdentity model;
    std::chrono::milliseconds drain_timeout{30000};
    // Supervised: how long connections wait in the backlog for the engine to be ready before
    // the worker accepts them anyway (and answers 503 model_loading until it is).
    std::chrono::seconds hold_while_loading{30};
    // Supervised: a swap's incoming worker, loading beside the serving one
    // (protocol::kStandbyVariable).
    bool standby = false;
};

// Parses argv into options; on --help or a bad argument returns the exit code to use.
std::variant<WorkerOptions, int> parse_worker_options(int argc, char** argv);

// `ensemble-worker --front-door ...`: the front door (front_door.h) instead of a model.
struct FrontDoorOptions {
    FrontDoorConfig door;
    std::chrono::milliseconds drain_timeout{30000};
};
inline constexpr std::string_view kFrontDoorFlag = "--front-door";
std::variant<FrontDoorOptions, int> parse_front_door_options(int argc, char** argv);

// The listener's settings that travel in the environment: the API key, /metrics without it,
// and the listening socket ensembled passed (protocol/worker_contract.h).
Status listener_from_environment(ListenerConfig& listener);

}  // namespace ensemble
