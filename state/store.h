// The SQLite store, and the only code that touches SQLite: desired assignments (port -> model),
// worker records, and the append-only event log. WAL mode with synchronous=FULL: a write that
// returned has reached the disk, so a crash or power cut never loses what the operator asked for.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/result.h"

struct sqlite3;

namespace ensemble {

struct Assignment {
    int port = 0;
    std::string handle;
    std::string profile;          // empty: loaded by hand
    std::int64_t generation = 0;  // bumped on every change of this port's assignment
};

struct WorkerRecord {
    int port = 0;
    std::string handle;
    std::string worker_id;
    std::string token;
    std::int64_t pid = 0;
    std::int64_t pid_start_time = 0;  // os/process_identity.h: guards against pid reuse
    // The worker's engine as its last heartbeat named it: killed (after proving pid and start
    // time) when the worker is found gone with the engine still running.
    std::int64_t engine_pid = 0;
    std::int64_t engine_start_time = 0;
    std::int64_t engine_group = 0;
    int slot = 0;  // its port's set of files (protocol::port_files): logs, engine record
    // A chained model's upstream as its worker was started in front of it (empty, 0: none).
    std::string upstream_handle;
    int upstream_port = 0;
    std::string upstream_url;
    std::string state;
    std::int64_t started_at_ms = 0;
    std::int64_t ready_at_ms = 0;
    int restarts = 0;
    std::string last_exit;
};

// Ollama's keep_alive for a load on demand (the front door's): for the worker that serves it.
struct KeptAliveRecord {
    int port = 0;
    std::string worker_id;  // the load it was given for
    std::string handle;
    std::int64_t limit_s = -1;  // idle seconds before it is unloaded; -1: never
    std::int64_t since_ms = 0;  // unix ms: when it was given (the end of its request)
};

struct Event {
    std::int64_t id = 0;
    std::int64_t at_ms = 0;
    int port = 0;  // 0: not about one port
    std::string kind;
    std::string message;
};

class StateStore {
  public:
    // Refuses a database that is damaged (SQLite's quick_check), not a database, or empty while
    // a backup exists ("state_damaged": the message names the file and how to recover) — never
    // a silently empty fleet. Takes a backup once it is known to be sound.
    static Result<std::unique_ptr<StateStore>> open(const std::filesystem::path& path);
    // The rolling backup beside the database (state.db.backup): a consistent copy taken at
    // open and after every committed change of the assignments.
    static std::filesystem::path backup_path(const std::filesystem::path& path);
    ~StateStore();
    StateStore(const StateStore&) = delete;
    StateStore& operator=(const StateStore&) = delete;

    static int schema_version();

    Result<std::vector<Assignment>> assignments();
    Status set_assignment(const Assignment& assignment);
    Status remove_assignment(int port);
    // Replaces every assignment at once (a profile load is all-or-nothing).
    Status replace_assignments(const std::vector<Assignment>& assignments);

    Result<std::vector<WorkerRecord>> workers();
    Status save_worker(const WorkerRecord& worker);

    Result<std::vector<KeptAliveRecord>> kept_alive();
    Status save_kept_alive(const KeptAliveRecord& kept);
    Status remove_kept_alive(int port);
    Status remove_worker(int port);

    Status append_event(const Event& event);  // keeps the newest `event_retention` events
    Result<std::vector<Event>> newest_events(int limit);  // oldest first
    // The first `limit` events after `after_id` (a follower's cursor: none is skipped).
    Result<std::vector<Event>> events_after(std::int64_t after_id, int limit);

    Result<std::string> meta(const std::string& key);  // "" when unset
    Status set_meta(const std::string& key, const std::string& value);

    Result<std::string> integrity_check();  // "ok" when the database is sound
    Status backup();
    // Why the last backup failed ("" when it worked): the change itself was committed.
    const std::string& backup_problem() const { return backup_problem_; }

    std::size_t event_retention = 10000;

  private:
    StateStore(sqlite3* db, std::filesystem::path path) : db_(db), path_(std::move(path)) {}
    Status exec(const std::string& sql);
    Status migrate();
    Status check_sound();
    Status committed(Status change);  // backs up after a committed change of the assignments

    sqlite3* db_;
    std::filesystem::path path_;
    std::string backup_problem_;
};

}  // namespace ensemble
