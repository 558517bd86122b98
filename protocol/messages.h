// The messages of both sockets. workers.sock: a worker registers with the id and one-time token
// it was started with, then sends a heartbeat every second; the supervisor may tell it to stop.
// control.sock: one request per line from the `ensemble` CLI, one reply each.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "protocol/control_verbs.h"
#include "protocol/result.h"

namespace ensemble::protocol {

// Bumped on any incompatible change; both sides refuse a peer with another version.
constexpr int kVersion = 1;

// A worker's environment, exit codes and files: protocol/worker_contract.h.

// ---- workers.sock ----

struct Register {
    std::string worker_id;
    std::string token;
    int port = 0;
    std::int64_t pid = 0;
    int version = kVersion;
    // The model it serves: a supervisor that lost its record of this worker (state.db gone)
    // adopts it from what it says, when that is what the port should serve.
    std::string handle;
    int files = 0;  // its set of the port's files (worker_contract.h, kWorkerFilesVariable)
    // The front door (supervisor.front_door), not a model's worker: `port` is its port, and it
    // serves no model (`handle` is empty).
    bool front_door = false;
    // The front door's command line after the program, as it was started: a front door kept
    // from before a restart of ensembled is replaced when the config now says otherwise.
    std::string settings;
};

struct WorkerStats {
    std::string state;               // the engine's state: loading, ready, restarting, ...
    std::uint64_t memory_bytes = 0;  // PSS of the worker and its engine (0 if unknown)
    std::uint64_t requests = 0;
    std::uint64_t failed = 0;
    std::uint64_t tokens = 0;       // generated tokens relayed since the worker started
    std::uint32_t queue_depth = 0;  // requests waiting for the engine
    std::uint32_t in_flight = 0;    // requests being answered by the engine
    std::int64_t engine_pid = 0;
    // The engine's identity, for the supervisor's record: it kills an engine left behind by a
    // dead worker only when pid and start time still match (0: no engine runs).
    std::int64_t engine_start_time = 0;
    std::int64_t engine_group = 0;
    int engine_restarts = 0;
    std::string engine_last_exit;
    // While the engine loads a model file it maps (llama.cpp's GGUF): how much of the file is
    // resident in the engine's mapping, and the file's size (0 and 0: no such mapping). The
    // supervisor turns them, or else memory_bytes against its estimate, into load progress.
    std::uint64_t load_mapped_bytes = 0;
    std::uint64_t load_file_bytes = 0;
    // Serving or holding requests: not idle, whatever the time since the last one began.
    bool busy() const { return queue_depth > 0 || in_flight > 0; }
};

struct Heartbeat {
    WorkerStats stats;
};

// The front door asks for a model that no port serves to be loaded on demand; ensembled answers
// with a demand_result, and the routes show the load as it goes.
struct Demand {
    std::string model;  // a handle of the config
};

// The front door passes on Ollama's `keep_alive` after it relayed a request: how long the model
// stays loaded once idle, if the front door loaded it on demand.
struct KeepAlive {
    std::string model;  // a handle of the config
    int port = 0;       // the port that served the request
    // Idle time allowed after its last request; 0: unload once idle; kForever: never;
    // kDefault: front_door.evict_idle_after again (a request gave none).
    std::int64_t seconds = 0;
    static constexpr std::int64_t kForever = -1;
    static constexpr std::int64_t kDefault = -2;
    // Longer is for ever in all but name (and would overflow a clock's nanoseconds).
    static constexpr std::int64_t kLongest = 100LL * 365 * 24 * 3600;
};

using WorkerMessage = std::variant<Register, Heartbeat, Demand, KeepAlive>;

nlohmann::json to_json(const Register& m);
nlohmann::json to_json(const Heartbeat& m);
nlohmann::json to_json(const Demand& m);
nlohmann::json to_json(const KeepAlive& m);
Result<WorkerMessage> parse_worker_message(const nlohmann::json& j);

// Supervisor to worker: {"type":"registered"}, {"type":"stop"}, {"type":"serve"} (a worker
// started to stand by begins accepting), {"type":"error",...}.
nlohmann::json registered_message();
nlohmann::json stop_message();
nlohmann::json serve_message();

// Supervisor to front door: every model of the config and where it is served, sent when it
// changes ({"type":"routes","models":[...]}), and the outcome of a demand.
struct Route {
    std::string handle;
    std::vector<std::string> aliases;
    int port = 0;                    // where it is served (or loading); 0: on no port
    std::string state = "stopped";   // the port's state (supervisor/port_state.h)
    bool on_demand = false;          // a request for it may load it (supervisor.front_door)
    std::string path;                // the model's file or folder, for Ollama's listings
    int context = 0;                 // what one request may use
    bool tools = false;              // its engine serves tool calls
    std::uint64_t memory_bytes = 0;  // measured, while it runs
    std::int64_t expires_unix = 0;   // when an idle on-demand load is unloaded; 0: never
    // While it loads: how far, in thousandths (supervisor/load_progress.h; at most 990), and
    // what is measured: "memory" (in use against the estimate) until the engine maps the model
    // file, then "mapping" (of the file resident): the two are not one scale.
    int load_permille = 0;
    std::string load_measure;
};
nlohmann::json routes_message(const std::vector<Route>& routes);
// nullopt: `message` is not a routes message; an error: it is one, malformed.
std::optional<Result<std::vector<Route>>> parse_routes(const nlohmann::json& message);

struct DemandResult {
    std::string model;
    std::optional<Error> refusal;  // nullopt: it is served (or loading)
};
nlohmann::json demand_result_message(const DemandResult& result);
std::optional<Result<DemandResult>> parse_demand_result(const nlohmann::json& message);

// ---- control.sock ----

struct ControlRequest {
    Verb verb = Verb::status;
    std::optional<int> port;
    std::string model;
    std::string profile;
    int lines = 50;  // for logs
    // For verbs that start workers: false answers once the command is accepted, and it goes
    // on in ensembled (its outcome in the events and `status`).
    bool wait = true;
    // load, profile-load: use ports in supervisor.reserved_ports all the same.
    bool force = false;
};

Result<ControlRequest> parse_control_request(const nlohmann::json& j);
nlohmann::json to_json(const ControlRequest& r);

nlohmann::json ok_reply(nlohmann::json result = nlohmann::json::object());
nlohmann::json error_reply(const Error& error);

}  // namespace ensemble::protocol
