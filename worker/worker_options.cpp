#include "worker/worker_options.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>

#include "os/child_process.h"
#include "os/private_folder.h"
#include "os/recorded_process.h"
#include "profiles/engine_preset.h"
#include "protocol/framing.h"
#include "protocol/port_limits.h"
#include "protocol/worker_contract.h"

extern char** environ;

namespace ensemble {

namespace {

// CLI::Range lets "nan" through (every comparison with it is false).
const CLI::Validator kFiniteNumber(
    [](std::string& text) {
        return std::isfinite(std::strtod(text.c_str(), nullptr)) ? std::string()
                                                                 : "must be a finite number";
    },
    "FINITE");

// Both modes' --drain-timeout, in seconds (ensembled passes fractions).
void add_drain_timeout_option(CLI::App& app, double& seconds) {
    const double most = std::chrono::duration<double>(protocol::kMaxDrainTimeout).count();
    app.add_option("--drain-timeout", seconds,
                   "seconds a stop (SIGTERM, or the supervisor's) waits for requests in flight to "
                   "finish before it ends them (fractions allowed)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, most) & kFiniteNumber);
}

static_assert(sizeof(std::size_t) >= sizeof(std::uint64_t),
              "the limits' ranges (protocol/port_limits.h) need a 64-bit size_t");

// The limits of a public port (protocol/port_limits.h), the same for both kinds of port, with
// the ranges ensembled's config accepts; read into the listener's config by apply().
class PortLimitOptions {
  public:
    PortLimitOptions(CLI::App& app, ListenerConfig& limits)
        : limits_(limits),
          idle_seconds_(limits.idle_timeout.count()),
          header_seconds_(limits.header_timeout.count()),
          send_seconds_(limits.send_timeout.count()) {
        add(app, protocol::kMaxBodyBytes, limits.max_body_bytes, "largest request body accepted");
        add(app, protocol::kMaxConnections, limits.max_connections,
            "client connections served at once (more are answered 503)");
        add(app, protocol::kIdleTimeout, idle_seconds_,
            "seconds a connection may wait for a request to begin (kept alive between requests, "
            "or newly opened) before it is closed");
        add(app, protocol::kHeaderTimeout, header_seconds_,
            "seconds a client has to send a request's headers once it has begun");
        // One limit for every write to a client: the listener's own answers and those relayed.
        add(app, protocol::kSendTimeout, send_seconds_,
            "seconds a write to a client may wait for its socket to take more (the client reads "
            "too little of its answer, or none) before its connection is closed and its engine "
            "request cancelled, as nginx's send_timeout");
    }
    void apply() const {
        limits_.idle_timeout = std::chrono::seconds(idle_seconds_);
        limits_.header_timeout = std::chrono::seconds(header_seconds_);
        limits_.send_timeout = std::chrono::seconds(send_seconds_);
    }

  private:
    template <typename T>
    static void add(CLI::App& app, const protocol::PortLimit& limit, T& value,
                    const std::string& help) {
        app.add_option(std::string(limit.option), value, help)
            ->capture_default_str()
            ->check(CLI::Range(static_cast<T>(limit.least), static_cast<T>(limit.most)));
    }

    ListenerConfig& limits_;
    std::int64_t idle_seconds_;
    std::int64_t header_seconds_;
    std::int64_t send_seconds_;
};

Error bad_option(std::string message) {
    return Error{"bad_option", std::move(message)};
}

std::filesystem::path default_log_dir() {
    if (const char* state = std::getenv("XDG_STATE_HOME"); state != nullptr && *state != '\0') {
        return std::filesystem::path(state) / "ensemble" / "logs";
    }
    if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
        return std::filesystem::path(home) / ".local" / "state" / "ensemble" / "logs";
    }
    // Never a folder every user shares: one of this user's own in the temporary directory.
    return std::filesystem::temp_directory_path() / ("ensemble-" + std::to_string(::geteuid())) /
           "logs";
}

// The engine's own environment: --engine-env NAME=VALUE, and every ENSEMBLE_ENGINE_ENV_NAME in
// ours (how ensembled passes a config's engine env without showing it in ps), which is then
// removed so it is not inherited twice.
Status engine_environment(const std::vector<std::string>& assignments,
                          std::map<std::string, std::string>& env) {
    std::vector<std::string> passed;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        const auto kEngineEnvPrefix = protocol::kEngineEnvPrefix;
        if (!entry.starts_with(kEngineEnvPrefix)) continue;
        const auto equals = entry.find('=');
        if (equals == std::string_view::npos || equals == kEngineEnvPrefix.size()) continue;
        const auto name = entry.substr(kEngineEnvPrefix.size(), equals - kEngineEnvPrefix.size());
        env[std::string(name)] = std::string(entry.substr(equals + 1));
        passed.emplace_back(entry.substr(0, equals));
    }
    for (const auto& variable : passed)
        ::unsetenv(variable.c_str());
    for (const auto& assignment : assignments) {
        const auto equals = assignment.find('=');
        if (equals == 0 || equals == std::string::npos)
            return bad_option("--engine-env '" + assignment + "' must be NAME=VALUE");
        const auto name = assignment.substr(0, equals);
        if (const auto ok = check_engine_env_name(name); !ok)
            return bad_option("--engine-env " + name + ": " + ok.error().message);
        env[name] = assignment.substr(equals + 1);
    }
    return Ok{};
}

// Whether the engine can listen where it must: not on a socket path too long or in a folder
// others can enter, nor on {socket} in a command without one.
Status check_engine_socket(const EngineConfig& engine) {
    if (engine.socket.empty()) {
        if (engine.preset.name == "command" && listens_on_socket(engine.preset))
            return bad_option("the engine command listens on {socket}: pass --engine-socket PATH");
        return Ok{};
    }
    if (const auto size = engine.socket.string().size(); size > protocol::kMaxSocketPath) {
        return bad_option("--engine-socket " + engine.socket.string() + " is " +
                          std::to_string(size) + " bytes; Unix sockets allow " +
                          std::to_string(protocol::kMaxSocketPath) + ": choose a shorter path");
    }
    if (auto ok = check_sealed_folder(engine.socket.parent_path()); !ok)
        return bad_option("--engine-socket's folder: " + ok.error().message);
    return Ok{};
}

// Fills in what depends on several options.
Status finish(WorkerOptions& o, const std::string& engine_name, const std::string& command,
              const std::string& ready_path, const std::string& log_dir) {
    if (!protocol::is_valid_handle(o.model.handle))
        return bad_option("--handle '" + o.model.handle + "' " + protocol::kHandleRule);
    auto preset =
        engine_name == "command" ? command_preset(command, ready_path) : find_preset(engine_name);
    if (!preset) return preset.error();
    if (engine_name != "command" && !command.empty()) {
        return bad_option("--command is only for --engine command (the " + engine_name +
                          " preset has its own)");
    }
    o.engine.preset = *preset;
    if (uses_upstream(*preset) && o.engine.upstream_url.empty()) {
        return bad_option("the " + engine_name +
                          " engine runs in front of another model: pass --upstream-url URL and "
                          "--upstream-handle HANDLE (ensembled passes the port serving it)");
    }
    if (o.engine.binary.empty()) o.engine.binary = preset->default_binary;
    if (!find_program(o.engine.binary)) {
        return bad_option("engine program '" + o.engine.binary +
                          "' not found or not executable; install it, or pass --engine-bin PATH "
                          "(deploy/setup provisions llama-server in .engines/bin)");
    }
    o.engine.handle = o.model.handle;
    // What Ollama's /api/show and /api/ps tell of the model.
    o.front.model_path = o.engine.model;
    o.front.context = context_per_request(o.engine.preset, o.engine.context, o.engine.parallel);
    o.front.tools = serves_tools(o.engine.preset);
    if (o.engine.log_file.empty()) {
        const auto dir = log_dir.empty() ? default_log_dir() : std::filesystem::path(log_dir);
        if (log_dir.empty() &&
            dir.parent_path().parent_path() == std::filesystem::temp_directory_path()) {
            // In the shared temporary directory (no HOME): a folder of this user's alone.
            for (const auto& folder : {dir.parent_path(), dir}) {
                if (auto ok = check_private_folder(folder); !ok)
                    return bad_option("the default log folder: " + ok.error().message +
                                      " (or pass --log-dir)");
            }
        }
        o.engine.log_file = protocol::port_files(dir, o.front.port).engine_log;
    }
    o.engine.record_file = protocol::engine_record_for(o.engine.log_file);
    if (auto ok = check_engine_socket(o.engine); !ok) return ok;
    if (auto ok = listener_from_environment(o.front); !ok) return ok;
    if (const char* standby = std::getenv(protocol::kStandbyVariable); standby != nullptr) {
        if (std::string(standby) != "1" || !o.front.listen_fd ||
            std::getenv(protocol::kSupervisorSocketVariable) == nullptr)
            return bad_option(std::string(protocol::kStandbyVariable) +
                              " must be 1, and only in a worker ensembled starts (with " +
                              protocol::kListenFdVariable + " and " +
                              protocol::kSupervisorSocketVariable + ")");
        o.standby = true;
        ::unsetenv(protocol::kStandbyVariable);
    }
    return Ok{};
}

}  // namespace

Status listener_from_environment(ListenerConfig& listener) {
    if (listener.api_key.empty()) {
        if (const char* key = std::getenv(protocol::kApiKeyVariable); key != nullptr)
            listener.api_key = key;
    }
    ::unsetenv(protocol::kApiKeyVariable);  // the clients' key is not the engine's to know
    if (const char* open = std::getenv(protocol::kMetricsWithoutKeyVariable);
        open != nullptr && std::string_view(open) == "1")
        listener.metrics_without_key = true;
    if (const char* fd = std::getenv(protocol::kListenFdVariable); fd != nullptr) {
        // Supervised: the listening socket is ensembled's, passed as this descriptor.
        if (std::string(fd) != std::to_string(protocol::kListenFd))
            return bad_option(std::string(protocol::kListenFdVariable) + " must be " +
                              std::to_string(protocol::kListenFd) + ", not '" + fd + "'");
        listener.listen_fd = protocol::kListenFd;
        ::unsetenv(protocol::kListenFdVariable);
    }
    return Ok{};
}

std::variant<WorkerOptions, int> parse_worker_options(int argc, char** argv) {
    WorkerOptions o;
    std::string engine_name = "llama.cpp";
    std::string command;
    std::string ready_path = "/v1/models";
    std::string log_dir;
    std::string log_file;
    double drain_seconds = 30;
    int hold_seconds = 30;
    int queue_timeout = 60;
    double stall_timeout = 120;
    std::vector<std::string> engine_env;
    int engine_timeout = 600;
    double liveness_interval = 5;

    CLI::App app{"ensemble-worker: serves one model on one port through an inference engine"};
    app.add_option("--port", o.front.port, "public port to serve on")->required();
    app.add_option("--host", o.front.host, "address to bind")->capture_default_str();
    app.add_option("--model", o.engine.model, "model file, directory or repo id")->required();
    app.add_option("--handle", o.model.handle, "the model id clients use (kebab-case)")->required();
    app.add_option("--alias", o.model.aliases, "other ids accepted in a request's 'model'");
    app.add_flag("--accept-any-model", o.model.accept_any_model,
                 "serve any requested 'model' name with this model (pinned, never forwarded)");
    app.add_option("--engine", engine_name, "llama.cpp, mlx-lm, vllm, optillm or command")
        ->capture_default_str();
    app.add_option("--upstream-url", o.engine.upstream_url,
                   "a chained model's: the URL of the model it runs in front of ({upstream_url})");
    app.add_option("--upstream-handle", o.engine.upstream_handle,
                   "a chained model's: the handle of that model ({upstream_handle})");
    app.add_option("--engine-bin", o.engine.binary,
                   "engine program (default: the preset's, on PATH)");
    app.add_option("--command", command,
                   "for --engine command: a command line with {model} {port} "
                   "{context} {parallel} {handle} (and {upstream_url} {upstream_handle})");
    app.add_option("--ready-path", ready_path,
                   "for --engine command: GET path that answers 200 "
                   "when ready")
        ->capture_default_str();
    app.add_option("--engine-arg", o.engine.extra_args,
                   "extra argument for the engine (repeatable)")
        ->allow_extra_args(false);
    app.add_option("--context", o.engine.context, "context length")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 24));
    app.add_option("--parallel", o.engine.parallel, "parallel slots")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--api-key", o.front.api_key,
                   "require 'Authorization: Bearer KEY' "
                   "(or set ENSEMBLE_API_KEY)");
    app.add_flag("--metrics-without-key", o.front.metrics_without_key,
                 "GET /metrics answers without the API key (or set " +
                     std::string(protocol::kMetricsWithoutKeyVariable) + "=1)");
    const PortLimitOptions port_limits(app, o.front);
    app.add_option("--log-dir", log_dir,
                   "directory for the engine log (default: "
                   "$XDG_STATE_HOME/ensemble/logs)");
    app.add_option("--log-file", log_file, "engine log file (overrides --log-dir)");
    app.add_option("--engine-socket", o.engine.socket,
                   "Unix socket for the engine to listen on, in a folder only this user can "
                   "enter (engines that cannot: a loopback port; default: a loopback port)");
    app.add_option("--queue-max", o.front.queue_max,
                   "requests that may wait for a restarting "
                   "engine")
        ->capture_default_str();
    app.add_option("--queue-timeout", queue_timeout,
                   "seconds a request may wait for a restarting "
                   "engine")
        ->capture_default_str();
    app.add_option("--hold-while-loading", hold_seconds,
                   "supervised: seconds a connection waits in the port's backlog for the engine "
                   "to be ready, before it is answered 503 model_loading")
        ->check(CLI::Range(0, 3600))
        ->capture_default_str();
    add_drain_timeout_option(app, drain_seconds);
    app.add_option("--load-stall-timeout", stall_timeout,
                   "seconds without load progress before "
                   "the engine is restarted")
        ->capture_default_str()
        ->check(CLI::Range(1.0, 86400.0));
    app.add_option("--engine-env", engine_env,
                   "NAME=VALUE for the engine's environment only (repeatable; visible in ps: "
                   "under ensembled, values travel in ENSEMBLE_ENGINE_ENV_NAME instead)")
        ->allow_extra_args(false);
    app.add_option("--engine-timeout", engine_timeout,
                   "seconds the engine may go without sending anything once a request is "
                   "sent to it (504 engine_timeout before its answer, an error event in a "
                   "stream); checked every tenth of a second")
        ->capture_default_str();
    app.add_option("--engine-liveness-interval", liveness_interval,
                   "seconds between readiness probes of a ready engine (0: off)")
        ->capture_default_str();
    app.add_option("--engine-liveness-failures", o.engine.liveness_failures,
                   "missed probes in a row that mark the engine hung; it is killed and restarted")
        ->capture_default_str()
        ->check(CLI::Range(1, 100));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    o.engine.log_file = log_file;
    o.drain_timeout = std::chrono::milliseconds(std::llround(drain_seconds * 1000));
    o.hold_while_loading = std::chrono::seconds(hold_seconds);
    port_limits.apply();
    o.proxy.send_timeout = o.front.send_timeout;  // the proxy's writes go to the same clients
    o.proxy.queue_timeout = std::chrono::seconds(queue_timeout);
    o.proxy.engine_timeout = std::chrono::seconds(engine_timeout);
    o.proxy.max_idle_connections = static_cast<std::size_t>(o.engine.parallel);
    o.engine.load_stall_timeout =
        std::chrono::milliseconds(static_cast<long long>(stall_timeout * 1000));
    o.engine.liveness_interval =
        std::chrono::milliseconds(static_cast<long long>(liveness_interval * 1000));
    auto ok = engine_environment(engine_env, o.engine.env);
    if (ok) ok = finish(o, engine_name, command, ready_path, log_dir);
    if (!ok) {
        std::cerr << "ensemble-worker: " << ok.error().message << '\n';
        return protocol::exit_code(protocol::WorkerExit::bad_configuration);
    }
    return o;
}

std::variant<FrontDoorOptions, int> parse_front_door_options(int argc, char** argv) {
    FrontDoorOptions o;
    double drain_seconds = 30;
    int load_timeout = static_cast<int>(o.door.load_timeout.count());
    int engine_timeout = static_cast<int>(o.door.proxy.engine_timeout.count());
    CLI::App app{
        "ensemble-worker --front-door: one port for every model, routed by the model a request "
        "names (started by ensembled for supervisor.front_door)"};
    bool front_door = false;
    app.add_flag("--front-door", front_door, "serve as the front door")->required();
    app.add_option("--port", o.door.port, "public port to serve on")->required();
    app.add_option("--host", o.door.host, "address to bind")->capture_default_str();
    app.add_option("--ports-host", o.door.ports_host, "address the model ports are reached on")
        ->capture_default_str();
    app.add_option("--queue-max", o.door.queue_max,
                   "requests that may wait for models to load, all together")
        ->capture_default_str()
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
    app.add_option("--load-timeout", load_timeout,
                   "seconds a request waits while its model's load shows no progress, then 503")
        ->capture_default_str()
        ->check(CLI::Range(1, 86400));
    app.add_option("--engine-timeout", engine_timeout,
                   "seconds a model port may go without sending anything once a request is "
                   "forwarded")
        ->capture_default_str();
    const PortLimitOptions port_limits(app, o.door);
    add_drain_timeout_option(app, drain_seconds);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    o.drain_timeout = std::chrono::milliseconds(std::llround(drain_seconds * 1000));
    o.door.load_timeout = std::chrono::seconds(load_timeout);
    o.door.proxy.engine_timeout = std::chrono::seconds(engine_timeout);
    port_limits.apply();
    o.door.proxy.send_timeout = o.door.send_timeout;
    // A request waits for its model in the front door's own queue, not in the proxy's.
    o.door.proxy.queue_timeout = std::chrono::seconds(5);
    o.door.proxy.max_idle_connections = 8;
    o.door.proxy.keep_authorization = true;
    if (auto ok = listener_from_environment(o.door); !ok) {
        std::cerr << "ensemble-worker: " << ok.error().message << '\n';
        return protocol::exit_code(protocol::WorkerExit::bad_configuration);
    }
    return o;
}

}  // namespace ensemble
