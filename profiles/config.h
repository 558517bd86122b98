// The operator's configuration: supervisor settings, engines, models and profiles (port ->
// model), loaded from one YAML file (plus an optional directory of includes) and validated with
// file:line:column positions for every problem found, not just the first.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "profiles/engine_preset.h"
#include "protocol/port_limits.h"
#include "protocol/result.h"

namespace ensemble {

// Log files the supervisor and its workers write (their own and each engine's): rotated by
// copy-and-truncate when one grows past max_bytes, keeping `keep` older files (.1 newest).
struct LogSettings {
    std::uint64_t max_bytes = 50ULL * 1024 * 1024;
    int keep = 3;
};

// How the supervisor decides a worker is unwell.
struct HealthSettings {
    int missed_heartbeats = 3;                   // heartbeats are 1 s apart
    std::chrono::milliseconds kill_grace{5000};  // SIGTERM to SIGKILL for a hung worker
    // A worker asked to stop (unload, swap, restart, refused) lets its requests in flight finish
    // for up to drain_timeout, then stops its engine (protocol::kEngineStopGrace); one still there
    // after stop_timeout is killed. A config that sets drain_timeout and not stop_timeout gets
    // the sum of the two and protocol::kStopMargin; one that sets both may not set less.
    std::chrono::milliseconds drain_timeout{30000};
    std::chrono::milliseconds stop_timeout{45000};
    std::chrono::milliseconds probe_interval{5000};  // GET /health on each public port; 0: off
    std::chrono::milliseconds probe_timeout{2000};
    int probe_failures = 3;  // in a row: the worker is restarted
    // Each worker probes its engine's readiness this often once it is ready; this many misses in
    // a row (a hung or stopped engine) and the worker kills and restarts it.
    std::chrono::milliseconds engine_probe_interval{5000};
    int engine_probe_failures = 3;
};

// When a failed port is restarted, and when it has failed too often to try again.
struct RestartSettings {
    std::chrono::milliseconds first_backoff{1000};
    std::chrono::milliseconds max_backoff{60000};
    std::chrono::milliseconds healthy_after{60000};
    int crash_loop_failures = 5;
    std::chrono::milliseconds crash_loop_window{300000};
};

// Whether a port may be unloaded to make room for another model under the memory budget.
enum class EvictPolicy { never, idle };

// The memory budget's policies (the budget itself is SupervisorSettings::memory_budget).
struct MemorySettings {
    // A port counts as idle once it has no request in flight and served none for this long.
    std::chrono::milliseconds idle_after{60000};
    // When the measured total passes the budget: always an event and a warning; with this set,
    // the lowest-priority port is also stopped (and unassigned).
    bool stop_lowest_over_budget = false;
};

// ensembled's read-only HTTP listener (supervisor.http): the fleet's /metrics, /api/status,
// /api/events and the status page. Off unless configured; a non-loopback host needs a token.
struct StatusHttpSettings {
    std::string host = "127.0.0.1";
    int port = 0;
    // A file holding the bearer token the listener requires (mode 0600); empty: no token, and
    // then the host must be loopback.
    std::filesystem::path token_file;
};

// The front door (supervisor.front_door): one port for every model, routed by the model a
// request names, loading models on demand on a pool of ports. Off unless configured.
struct FrontDoorSettings {
    std::string host = "127.0.0.1";
    int port = 0;
    // Every model may be loaded on demand (on_demand: all), or only those that say so
    // (on_demand: listed, the default: ModelSpec::on_demand).
    bool on_demand_all = false;
    std::set<int> ports;  // where on-demand loads go; empty: nothing loads on demand
    // An on-demand load that has served nothing for this long is unloaded.
    std::chrono::milliseconds evict_idle_after{std::chrono::minutes(5)};
    // How long a request waits while its model's load shows no progress, then 503 (as Ollama's
    // OLLAMA_LOAD_TIMEOUT: a load that moves is waited for).
    std::chrono::milliseconds load_timeout{std::chrono::minutes(10)};
    std::size_t queue_max = 64;  // requests waiting for models to load, all together

    bool operator==(const FrontDoorSettings&) const = default;
};

struct SupervisorSettings {
    std::filesystem::path state_dir;  // state.db and logs
    std::filesystem::path run_dir;    // control.sock and workers.sock (mode 0700)
    std::string memory_budget;        // "170GiB" or "85%"; empty: no budget
    std::string boot_profile;
    std::string bind_host = "127.0.0.1";
    // A connection to a port whose worker is loading (a restart, a swap) waits this long in the
    // port's backlog; then the worker answers it, 503 model_loading with Retry-After.
    std::chrono::milliseconds hold_while_loading{30000};
    // Ports below 1024 belong to system services (ssh on 22): served only when this is set.
    bool allow_privileged_ports = false;
    // Kept free (for manual testing, another program): loads and profiles that would use them
    // are refused unless forced; the boot profile may not use them.
    std::set<int> reserved_ports;
    // Naming policy, optional: engine (a name under `engines` or a preset) -> the prefix its
    // models' handles carry ("mlx-lm": "mlx-"). `check` reports handles that break it.
    std::map<std::string, std::string> naming;
    // macOS: the GPU wired limit the MLX models need (sysctl iogpu.wired_limit_mb), set at boot
    // by deploy/install-wired-limit's LaunchDaemon and checked by `check`.
    std::optional<std::uint64_t> gpu_wired_limit_bytes;
    std::optional<StatusHttpSettings> http;
    std::optional<FrontDoorSettings> front_door;
    // The listener limits of every public port, model ports and the front door; those left out
    // are the worker's defaults.
    protocol::PortLimitValues port_limits;
    LogSettings logs;
    HealthSettings health;
    RestartSettings restart;
    MemorySettings memory;
};

struct EngineSpec {
    std::string name;
    EnginePreset preset;
    std::string binary;  // empty: the preset's default on PATH
    std::vector<std::string> args;
    std::string command;     // preset "command": the command line as written
    std::string ready_path;  // preset "command": the readiness path
    // Set in the engine's environment only (HF_HOME, PYTORCH_ENABLE_MPS_FALLBACK, ...): never in
    // the worker's, never on a command line (values may be tokens).
    std::map<std::string, std::string> env;
    // A load with no progress (log output, an answer) for this long is killed and retried.
    std::optional<std::chrono::milliseconds> load_stall_timeout;
};

struct ModelSpec {
    std::string handle;
    std::string engine;  // an EngineSpec name (presets are engines too)
    std::string path;
    int context = 4096;
    int parallel = 4;
    std::optional<std::uint64_t> memory_bytes;
    int priority = 0;  // higher is more important: evicted last, stopped last
    EvictPolicy evict = EvictPolicy::never;
    std::vector<std::string> aliases;
    bool accept_any_model = false;  // any requested name is served by this model
    // A request to the front door for it loads it when no port serves it (supervisor.front_door).
    bool on_demand = false;
    // A chained model (an OptiLLM proxy, say) runs in front of this model, served on another
    // port: it starts once that port is ready, and waits while it is not ({upstream_url}).
    std::string upstream;
    std::vector<std::string> args;
};

struct PortAssignment {
    int port = 0;
    std::string model;  // handle
    std::optional<int> context;
    std::optional<int> parallel;
    std::optional<int> priority;
    std::optional<EvictPolicy> evict;
};

struct Profile {
    std::string name;
    std::map<int, PortAssignment> ports;
    std::optional<int> priority;  // for its ports, unless a port says otherwise
    std::optional<EvictPolicy> evict;
};

struct Config {
    std::filesystem::path source;
    SupervisorSettings supervisor;
    std::map<std::string, EngineSpec> engines;
    std::map<std::string, ModelSpec> models;
    std::map<std::string, Profile> profiles;

    const ModelSpec* find_model(const std::string& handle) const;
    std::string model_names() const;  // "a, b, c"
    // The engine a model runs on, from `engines` (presets are there too); nullptr if unknown.
    const EngineSpec* engine_of(const ModelSpec& model) const;
    // Whether the front door may load `model` on demand.
    bool loads_on_demand(const ModelSpec& model) const;
};

struct ConfigIssue {
    std::string file;
    int line = 0;    // 1-based; 0 when the problem has no position
    int column = 0;  // 1-based
    std::string message;

    std::string to_string() const;  // "file:line:column: message"
};

struct ConfigLoad {
    std::optional<Config> config;  // set only when there are no issues
    std::vector<ConfigIssue> issues;
};

// Loads and validates. `check_files` also requires model files to exist (off for unit tests of
// the schema alone).
ConfigLoad load_config(const std::filesystem::path& path, bool check_files = true);

// "170GiB", "12GB", "512MiB", "1024" (bytes); percentages are handled by the budget.
std::optional<std::uint64_t> parse_bytes(const std::string& text);

// "500ms", "5s", "2m", "1h"; a bare number is seconds.
std::optional<std::chrono::milliseconds> parse_duration(const std::string& text);
// The other way: "45s", or "1500ms" when not a whole number of seconds.
std::string duration_text(std::chrono::milliseconds duration);

// "localhost", 127.0.0.0/8 or ::1: a listener there is reachable from this machine only.
bool is_loopback_host(const std::string& host);

// Whether `port` may be served under these settings: not below 1024 without
// allow_privileged_ports ("privileged_port").
Status check_port_allowed(const SupervisorSettings& settings, int port);
// The handles that break supervisor.naming, one sentence each (empty without a policy).
std::vector<std::string> naming_violations(const Config& config);

// Whether `port` is outside supervisor.reserved_ports, or `force`d ("reserved_port").
Status check_port_not_reserved(const SupervisorSettings& settings, int port, bool force);

// Defaults when the config does not say: /var/lib/ensemble and /run/ensemble for root;
// $XDG_STATE_HOME/ensemble and $XDG_RUNTIME_DIR/ensemble otherwise.
std::filesystem::path default_state_dir();
std::filesystem::path default_run_dir();

// The run_dir a config names, read leniently (the rest of the file may have errors), so the CLI
// can still reach the supervisor to reload a config being fixed; the default if it names none.
// An error ("config_unreadable") only when the file cannot be read or is not YAML at all: then
// its run_dir is unknown, and guessing the default would report a running ensembled as not
// running.
Result<std::filesystem::path> run_dir_of(const std::filesystem::path& config_path);

}  // namespace ensemble
