// The contract between ensembled and ensemble-worker, written once and used on both sides: how
// a worker exits and what each exit means, the environment it is started with, the names of the
// files a port's worker and engine keep, and what a model handle may look like.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

namespace ensemble::protocol {

// ---- how a worker exits (docs/WORKER.md, "Exit codes") ----

enum class WorkerExit : int {
    ok = 0,                  // stopped as asked (SIGTERM, the supervisor's stop, an orphanhood)
    bad_configuration = 2,   // its command line or environment was refused
    port_in_use = 3,         // the public port is taken (or cannot be bound)
    engine_not_started = 4,  // the engine program could not be started at all
    model_not_loadable = 5,  // the engine failed to load the model, again and again
};

inline constexpr int exit_code(WorkerExit exit) {
    return static_cast<int>(exit);
}

// ---- how a worker stops (docs/WORKER.md, "Standalone and supervised") ----

// A worker asked to stop lets the requests in flight finish for up to its drain timeout
// (--drain-timeout: the config's health.drain_timeout), then stops its engine: SIGTERM, and
// SIGKILL after this long.
inline constexpr std::chrono::milliseconds kEngineStopGrace{10000};
// How long the supervisor gives a worker asked to stop, beyond its drain and its engine's stop,
// before it kills it (health.stop_timeout is at least the sum of the three).
inline constexpr std::chrono::milliseconds kStopMargin{5000};
// The longest drain a worker takes (--drain-timeout, health.drain_timeout).
inline constexpr std::chrono::hours kMaxDrainTimeout{168};
// The least stop_timeout that lets a worker drain for `drain` and stop its engine.
inline constexpr std::chrono::milliseconds least_stop_timeout(std::chrono::milliseconds drain) {
    return drain + kEngineStopGrace + kStopMargin;
}

// ---- a worker's environment, set by the supervisor that spawns it ----

inline constexpr const char* kSupervisorSocketVariable = "ENSEMBLE_SUPERVISOR_SOCKET";
inline constexpr const char* kWorkerIdVariable = "ENSEMBLE_WORKER_ID";
inline constexpr const char* kWorkerTokenVariable = "ENSEMBLE_WORKER_TOKEN";
// A config's engine `env:` travels as ENSEMBLE_ENGINE_ENV_<NAME>=<value>, not on the worker's
// command line, where `ps` shows it to every user; the worker moves it to its engine alone.
inline constexpr std::string_view kEngineEnvPrefix = "ENSEMBLE_ENGINE_ENV_";
// The clients' API key (kept out of `ps`); never passed on to the engine.
inline constexpr const char* kApiKeyVariable = "ENSEMBLE_API_KEY";
// Set to 1: GET /metrics answers without the API key (a Prometheus that holds no key).
inline constexpr const char* kMetricsWithoutKeyVariable = "ENSEMBLE_METRICS_WITHOUT_KEY";
// How long a worker serves on without a supervisor before it stops itself (milliseconds).
inline constexpr const char* kOrphanGraceVariable = "ENSEMBLE_ORPHAN_GRACE_MS";
// Set (to kListenFd) when the supervisor holds the public port's listening socket and passes it
// as that descriptor: the worker accepts on it and never binds. The socket outlives the worker,
// so connections wait in its backlog while no worker accepts. Without the descriptor the worker
// exits with WorkerExit::bad_configuration.
inline constexpr const char* kListenFdVariable = "ENSEMBLE_LISTEN_FD";
inline constexpr int kListenFd = 3;
// Set (to 1) for a swap's incoming worker: it loads its engine beside the serving worker and
// accepts on the port's socket only once told `serve` (messages.h); it exits if it loses the
// supervisor before.
inline constexpr const char* kStandbyVariable = "ENSEMBLE_STANDBY";
// Which of the port's sets of files (0 or 1, port_files below) the worker was started on; it says
// so when it registers, so that a supervisor that lost its record of it adopts it with them.
inline constexpr const char* kWorkerFilesVariable = "ENSEMBLE_WORKER_FILES";

// ---- a port's files ----

// Where the logs and engine records are: the state folder's logs/ (0700).
std::filesystem::path log_folder(const std::filesystem::path& state_dir);

// In the state folder's logs/: the worker's log, the engine's log, and the engine's record
// (engine-PORT.pid: who the running engine is, for whoever must stop one left behind).
struct PortFiles {
    std::filesystem::path worker_log;
    std::filesystem::path engine_log;
    std::filesystem::path engine_record;
};
// A port has two sets of files, slots 0 and 1 (slot 1's names end in ".b": engine-8100.b.log):
// during a swap the incoming worker and its engine load beside the serving ones, on the other
// slot.
inline constexpr int kSlots = 2;
PortFiles port_files(const std::filesystem::path& log_dir, int port, int slot = 0);
// The engine's record beside its log, whatever the log is called (--log-file).
std::filesystem::path engine_record_for(const std::filesystem::path& engine_log);
// In the run_dir (0700): the Unix socket the port's engine listens on, where its preset can.
std::filesystem::path engine_socket(const std::filesystem::path& run_dir, int port, int slot = 0);

// ---- model handles ----

// Kebab-case: lowercase letters and digits, with '-' or '.' between them, at most 64 characters
// (qwen3-8b, llama-3.1-8b). What clients send as `model`.
bool is_valid_handle(std::string_view handle);
inline constexpr const char* kHandleRule =
    "must be kebab-case: lowercase letters and digits, with '-' or '.' between them, at most 64 "
    "characters (e.g. qwen3-8b)";

}  // namespace ensemble::protocol
