// What the worker needs to know to run one engine: the preset, the model, and its limits.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "profiles/engine_preset.h"
#include "protocol/worker_contract.h"

namespace ensemble {

struct EngineConfig {
    EnginePreset preset;
    std::string binary;  // resolved program to run (preset default unless overridden)
    std::string model;   // path or repo id, as the engine understands it
    std::string handle;  // the id clients use; also the engine's alias where it has one
    // A chained model's: the URL of the port serving the model it runs in front of, and that
    // model's handle ({upstream_url}, {upstream_handle}); empty otherwise.
    std::string upstream_url;
    std::string upstream_handle;
    int context = 4096;
    int parallel = 4;
    std::vector<std::string> extra_args;
    std::filesystem::path log_file;
    // Where the running engine's identity is kept (engine-PORT.pid beside its log): a worker
    // started after this one was killed stops an engine it left behind before starting its own.
    std::filesystem::path record_file;
    // The Unix socket the engine listens on when its preset can (in a folder only this user
    // can enter); empty, or a preset that cannot: a free loopback port.
    std::filesystem::path socket;
    // A load that shows no progress (no new log output, no readiness) for this long is stuck.
    std::chrono::milliseconds load_stall_timeout{120000};
    // Added to the engine's environment only.
    std::map<std::string, std::string> env;
    std::chrono::milliseconds stop_grace{protocol::kEngineStopGrace};  // SIGTERM, then SIGKILL
    // While ready, the readiness probe runs this often; `liveness_failures` misses in a row
    // (timeouts: a hung or stopped engine) kill the engine, which is then restarted.
    std::chrono::milliseconds liveness_interval{5000};
    int liveness_failures = 3;
};

}  // namespace ensemble
