#include "state/store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <chrono>
#include <functional>

namespace ensemble {

namespace {

// Each entry upgrades the schema by one version; never edit one that has shipped.
const std::vector<const char*> kMigrations = {
    // 1: the initial schema.
    R"(CREATE TABLE assignments (
         port INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
         handle TEXT NOT NULL,
         profile TEXT NOT NULL DEFAULT '',
         generation INTEGER NOT NULL DEFAULT 1,
         updated_at_ms INTEGER NOT NULL);
       CREATE TABLE workers (
         port INTEGER PRIMARY KEY,
         handle TEXT NOT NULL,
         worker_id TEXT NOT NULL,
         token TEXT NOT NULL,
         pid INTEGER NOT NULL,
         pid_start_time INTEGER NOT NULL DEFAULT 0,
         engine_pid INTEGER NOT NULL DEFAULT 0,
         state TEXT NOT NULL,
         started_at_ms INTEGER NOT NULL DEFAULT 0,
         ready_at_ms INTEGER NOT NULL DEFAULT 0,
         restarts INTEGER NOT NULL DEFAULT 0,
         last_exit TEXT NOT NULL DEFAULT '');
       CREATE TABLE events (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at_ms INTEGER NOT NULL,
         port INTEGER NOT NULL DEFAULT 0,
         kind TEXT NOT NULL,
         message TEXT NOT NULL);
       CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);)",
    // 2: the engine's identity beside its pid, so an engine left behind can be proven ours.
    R"(ALTER TABLE workers ADD COLUMN engine_start_time INTEGER NOT NULL DEFAULT 0;
       ALTER TABLE workers ADD COLUMN engine_group INTEGER NOT NULL DEFAULT 0;)",
    // 3: which of the port's two sets of files (protocol::port_files) the worker uses.
    R"(ALTER TABLE workers ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;)",
    // 4: the upstream a chained model's worker was started in front of, which a re-adoption
    // must know (the config may name another since, or serve it on two ports).
    R"(ALTER TABLE workers ADD COLUMN upstream_handle TEXT NOT NULL DEFAULT '';
       ALTER TABLE workers ADD COLUMN upstream_port INTEGER NOT NULL DEFAULT 0;
       ALTER TABLE workers ADD COLUMN upstream_url TEXT NOT NULL DEFAULT '';)",
    // 5: Ollama's keep_alive for the load on demand a worker serves, which a restart of
    // ensembled must not turn back into front_door.evict_idle_after.
    R"(CREATE TABLE kept_alive (
         port INTEGER PRIMARY KEY,
         worker_id TEXT NOT NULL,
         handle TEXT NOT NULL,
         limit_s INTEGER NOT NULL,
         since_ms INTEGER NOT NULL);)",
};

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A prepared statement that finalizes itself.
class Statement {
  public:
    Statement(sqlite3* db, const char* sql) : db_(db) {
        rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
    }
    ~Statement() { sqlite3_finalize(stmt_); }
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;

    bool ok() const { return rc_ == SQLITE_OK; }
    Statement& bind(int i, std::int64_t v) {
        sqlite3_bind_int64(stmt_, i, v);
        return *this;
    }
    Statement& bind(int i, const std::string& v) {
        sqlite3_bind_text(stmt_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    int step() { return rc_ = sqlite3_step(stmt_); }
    std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }
    std::string text(int col) const {
        const auto* p = sqlite3_column_text(stmt_, col);
        return p ? reinterpret_cast<const char*>(p) : "";
    }
    Error error(const std::string& what) const {
        return Error{"state_error", what + ": " + sqlite3_errmsg(db_)};
    }

  private:
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
    int rc_;
};

// Runs a statement to completion (for writes).
Status run(sqlite3* db, const char* sql, const std::function<void(Statement&)>& binder,
           const std::string& what) {
    Statement s(db, sql);
    if (!s.ok()) return s.error(what);
    binder(s);
    if (s.step() != SQLITE_DONE) return s.error(what);
    return Ok{};
}

// The refusal to start on a database that is damaged or lost, with the way back.
Error state_damaged(const std::filesystem::path& path, const std::string& why) {
    const auto backup = StateStore::backup_path(path);
    std::error_code ec;
    const bool has_backup = std::filesystem::exists(backup, ec);
    return Error{
        "state_damaged",
        "the state database " + path.string() + " " + why +
            "; ensembled will not start on it, so that no assignment is silently "
            "forgotten. Move it aside with its journal (mv " +
            path.string() + " " + path.string() + ".damaged; mv " + path.string() + "-wal " +
            path.string() + "-wal.damaged; rm -f " + path.string() + "-shm), then restore " +
            (has_backup ? "the automatic backup (cp " + backup.string() + " " + path.string() + ")"
                        : "a backup of your own") +
            (has_backup ? ", or remove the backup too to start with no assignments"
                        : ", or start with no assignments by leaving it moved aside")};
}

enum class GenerationBump { always, if_model_changed };

// Inserts or updates one port's assignment; the generation starts at 1.
Status upsert_assignment(sqlite3* db, const Assignment& a, GenerationBump bump) {
    const char* sql =
        bump == GenerationBump::always
            ? "INSERT INTO assignments (port, handle, profile, generation, updated_at_ms) "
              "VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT(port) DO UPDATE SET "
              "generation = generation + 1, handle = ?2, profile = ?3, updated_at_ms = ?4"
            : "INSERT INTO assignments (port, handle, profile, generation, updated_at_ms) "
              "VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT(port) DO UPDATE SET "
              "generation = generation + (handle != ?2), handle = ?2, profile = ?3, "
              "updated_at_ms = ?4";
    return run(
        db, sql,
        [&](Statement& s) {
            s.bind(1, a.port).bind(2, a.handle).bind(3, a.profile).bind(4, now_ms());
        },
        "saving the assignment of port " + std::to_string(a.port));
}

}  // namespace

int StateStore::schema_version() {
    return static_cast<int>(kMigrations.size());
}

Result<std::unique_ptr<StateStore>> StateStore::open(const std::filesystem::path& path) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    // A fresh install has neither file; a database gone or emptied while its backup is there
    // was lost, not never used. (SQLite writes the header as soon as it creates the file.)
    if (std::filesystem::exists(backup_path(path), ec)) {
        if (!std::filesystem::exists(path, ec))
            return state_damaged(path, "is missing although it has been used before");
        if (std::filesystem::file_size(path, ec) == 0 && !ec)
            return state_damaged(path, "is empty (0 bytes) although it has been used before");
    }
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
        std::string why = db ? sqlite3_errmsg(db) : "out of memory";
        sqlite3_close(db);
        return Error{"state_open", "cannot open the state database " + path.string() + ": " + why +
                                       " (check the state_dir's permissions)"};
    }
    std::unique_ptr<StateStore> store(new StateStore(db, path));
    // It holds each worker's token: for this user's eyes only (SQLite gives its WAL the same).
    ::chmod(path.c_str(), 0600);
    sqlite3_busy_timeout(db, 5000);
    if (auto ok = store->check_sound(); !ok) return ok.error();
    for (const char* pragma :
         {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
        if (auto ok = store->exec(pragma); !ok) return ok.error();
    }
    if (auto ok = store->migrate(); !ok) return ok.error();
    (void)store->backup();  // a failure is kept in backup_problem() for status to show
    return store;
}

std::filesystem::path StateStore::backup_path(const std::filesystem::path& path) {
    return std::filesystem::path(path) += ".backup";
}

Status StateStore::check_sound() {
    const auto damaged = [&](const std::string& why) { return state_damaged(path_, why); };
    Statement check(db_, "PRAGMA quick_check");
    if (!check.ok() || check.step() != SQLITE_ROW) {
        const int code = sqlite3_errcode(db_) & 0xff;
        const std::string why = sqlite3_errmsg(db_);
        if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
            return damaged("cannot be read (" + why + ")");
        // Busy, locked, unreadable: nothing says the file is damaged; it is not to be moved.
        return Error{"state_open", "cannot check the state database " + path_.string() + ": " +
                                       why +
                                       " (is another ensembled using it? check the file's "
                                       "permissions and the disk)"};
    }
    if (const auto verdict = check.text(0); verdict != "ok")
        return damaged("is damaged (SQLite's quick_check: " + verdict.substr(0, 200) + ")");
    return Ok{};
}

Status StateStore::backup() {
    const auto target = backup_path(path_);
    const auto partial = std::filesystem::path(target) += ".partial";
    std::error_code ec;
    std::filesystem::remove(partial, ec);
    sqlite3* copy = nullptr;
    int rc = sqlite3_open_v2(partial.c_str(), &copy, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                             nullptr);
    if (rc == SQLITE_OK) {
        ::chmod(partial.c_str(), 0600);
        sqlite3_backup* b = sqlite3_backup_init(copy, "main", db_, "main");
        if (b == nullptr) {
            rc = sqlite3_errcode(copy);
        } else {
            // Whole or not at all: an incomplete copy must never replace the last good backup.
            const int step = sqlite3_backup_step(b, -1);
            rc = sqlite3_backup_finish(b);
            if (step != SQLITE_DONE && rc == SQLITE_OK) rc = step;
        }
    }
    const std::string why = copy != nullptr ? sqlite3_errmsg(copy) : "out of memory";
    sqlite3_close(copy);
    if (rc == SQLITE_OK) std::filesystem::rename(partial, target, ec);
    if (rc != SQLITE_OK || ec) {
        std::filesystem::remove(partial, ec);
        backup_problem_ = "the backup of the state database (" + target.string() +
                          ") failed: " + (rc != SQLITE_OK ? why : ec.message()) +
                          "; the database itself is up to date. Check the disk (df " +
                          path_.parent_path().string() + ")";
        return Error{"state_backup", backup_problem_};
    }
    backup_problem_.clear();
    return Ok{};
}

Status StateStore::committed(Status change) {
    // The change stands either way; a failed backup is kept in backup_problem() for status.
    if (change) (void)backup();
    return change;
}

StateStore::~StateStore() {
    sqlite3_close(db_);
}

Status StateStore::exec(const std::string& sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
        Error e{"state_error", "SQLite: " + std::string(message ? message : "unknown error")};
        sqlite3_free(message);
        return e;
    }
    return Ok{};
}

Status StateStore::migrate() {
    Statement version(db_, "PRAGMA user_version");
    if (!version.ok() || version.step() != SQLITE_ROW)
        return version.error("reading the schema version");
    const auto current = static_cast<std::size_t>(version.integer(0));
    if (current > kMigrations.size()) {
        return Error{"state_newer", "the state database has schema version " +
                                        std::to_string(current) + ", newer than this ensembled (" +
                                        std::to_string(kMigrations.size()) +
                                        "); run the newer ensembled or restore a backup"};
    }
    for (auto v = current; v < kMigrations.size(); ++v) {
        // One transaction per step: a crash mid-migration leaves the previous version intact.
        const auto sql = std::string("BEGIN IMMEDIATE;") + kMigrations[v] +
                         ";PRAGMA user_version=" + std::to_string(v + 1) + ";COMMIT;";
        if (auto ok = exec(sql); !ok) {
            (void)exec("ROLLBACK");  // the step's error is the one to report
            return Error{"state_migration", "migrating the state database to version " +
                                                std::to_string(v + 1) +
                                                " failed: " + ok.error().message};
        }
    }
    return Ok{};
}

Result<std::vector<Assignment>> StateStore::assignments() {
    Statement s(db_, "SELECT port, handle, profile, generation FROM assignments ORDER BY port");
    if (!s.ok()) return s.error("reading assignments");
    std::vector<Assignment> out;
    while (s.step() == SQLITE_ROW) {
        out.push_back({static_cast<int>(s.integer(0)), s.text(1), s.text(2), s.integer(3)});
    }
    return out;
}

Status StateStore::set_assignment(const Assignment& a) {
    return committed(upsert_assignment(db_, a, GenerationBump::always));
}

Status StateStore::remove_assignment(int port) {
    return committed(run(
        db_, "DELETE FROM assignments WHERE port = ?1", [&](Statement& s) { s.bind(1, port); },
        "removing the assignment of port " + std::to_string(port)));
}

Status StateStore::replace_assignments(const std::vector<Assignment>& assignments) {
    if (auto ok = exec("BEGIN IMMEDIATE"); !ok) return ok;
    auto fail = [&](Status st) {
        (void)exec("ROLLBACK");  // the failed write's error is the one to report
        return st;
    };
    // Ports that keep their model keep their generation; others are added or removed.
    std::string keep = "DELETE FROM assignments WHERE port NOT IN (";
    for (std::size_t i = 0; i < assignments.size(); ++i)
        keep += (i ? "," : "") + std::to_string(assignments[i].port);
    keep += ")";
    if (auto ok = exec(keep); !ok) return fail(ok);
    for (const auto& a : assignments) {
        if (auto ok = upsert_assignment(db_, a, GenerationBump::if_model_changed); !ok)
            return fail(ok);
    }
    return committed(exec("COMMIT"));
}

Result<std::vector<WorkerRecord>> StateStore::workers() {
    Statement s(
        db_,
        "SELECT port, handle, worker_id, token, pid, pid_start_time, engine_pid, state, "
        "started_at_ms, ready_at_ms, restarts, last_exit, engine_start_time, "
        "engine_group, slot, upstream_handle, upstream_port, upstream_url FROM workers ORDER BY "
        "port");
    if (!s.ok()) return s.error("reading worker records");
    std::vector<WorkerRecord> out;
    while (s.step() == SQLITE_ROW) {
        WorkerRecord w;
        w.port = static_cast<int>(s.integer(0));
        w.handle = s.text(1);
        w.worker_id = s.text(2);
        w.token = s.text(3);
        w.pid = s.integer(4);
        w.pid_start_time = s.integer(5);
        w.engine_pid = s.integer(6);
        w.state = s.text(7);
        w.started_at_ms = s.integer(8);
        w.ready_at_ms = s.integer(9);
        w.restarts = static_cast<int>(s.integer(10));
        w.last_exit = s.text(11);
        w.engine_start_time = s.integer(12);
        w.engine_group = s.integer(13);
        w.slot = static_cast<int>(s.integer(14));
        w.upstream_handle = s.text(15);
        w.upstream_port = static_cast<int>(s.integer(16));
        w.upstream_url = s.text(17);
        out.push_back(std::move(w));
    }
    return out;
}

Status StateStore::save_worker(const WorkerRecord& w) {
    return run(
        db_,
        "INSERT OR REPLACE INTO workers (port, handle, worker_id, token, pid, pid_start_time, "
        "engine_pid, state, started_at_ms, ready_at_ms, restarts, last_exit, engine_start_time, "
        "engine_group, slot, upstream_handle, upstream_port, upstream_url) VALUES (?1, ?2, ?3, "
        "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        [&](Statement& s) {
            s.bind(1, w.port)
                .bind(2, w.handle)
                .bind(3, w.worker_id)
                .bind(4, w.token)
                .bind(5, w.pid);
            s.bind(6, w.pid_start_time).bind(7, w.engine_pid).bind(8, w.state);
            s.bind(9, w.started_at_ms)
                .bind(10, w.ready_at_ms)
                .bind(11, w.restarts)
                .bind(12, w.last_exit);
            s.bind(13, w.engine_start_time).bind(14, w.engine_group).bind(15, w.slot);
            s.bind(16, w.upstream_handle).bind(17, w.upstream_port).bind(18, w.upstream_url);
        },
        "saving the worker record of port " + std::to_string(w.port));
}

Status StateStore::remove_worker(int port) {
    return run(
        db_, "DELETE FROM workers WHERE port = ?1", [&](Statement& s) { s.bind(1, port); },
        "removing the worker record of port " + std::to_string(port));
}

Result<std::vector<KeptAliveRecord>> StateStore::kept_alive() {
    Statement s(db_,
                "SELECT port, worker_id, handle, limit_s, since_ms FROM kept_alive ORDER BY port");
    if (!s.ok()) return s.error("reading the keep_alive of loads on demand");
    std::vector<KeptAliveRecord> out;
    while (s.step() == SQLITE_ROW) {
        out.push_back(
            {static_cast<int>(s.integer(0)), s.text(1), s.text(2), s.integer(3), s.integer(4)});
    }
    return out;
}

Status StateStore::save_kept_alive(const KeptAliveRecord& k) {
    return run(
        db_,
        "INSERT OR REPLACE INTO kept_alive (port, worker_id, handle, limit_s, since_ms) VALUES "
        "(?1, ?2, ?3, ?4, ?5)",
        [&](Statement& s) {
            s.bind(1, k.port).bind(2, k.worker_id).bind(3, k.handle);
            s.bind(4, k.limit_s).bind(5, k.since_ms);
        },
        "saving the keep_alive of port " + std::to_string(k.port));
}

Status StateStore::remove_kept_alive(int port) {
    return run(
        db_, "DELETE FROM kept_alive WHERE port = ?1", [&](Statement& s) { s.bind(1, port); },
        "removing the keep_alive of port " + std::to_string(port));
}

Status StateStore::append_event(const Event& e) {
    auto ok = run(
        db_, "INSERT INTO events (at_ms, port, kind, message) VALUES (?1, ?2, ?3, ?4)",
        [&](Statement& s) {
            s.bind(1, e.at_ms ? e.at_ms : now_ms())
                .bind(2, e.port)
                .bind(3, e.kind)
                .bind(4, e.message);
        },
        "appending an event");
    if (!ok) return ok;
    // Retention: cheap because id is the rowid; runs on every append but touches only old rows.
    return run(
        db_, "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
        [&](Statement& s) { s.bind(1, static_cast<std::int64_t>(event_retention)); },
        "pruning events");
}

namespace {

Result<std::vector<Event>> read_events(Statement& s) {
    std::vector<Event> out;
    while (s.step() == SQLITE_ROW) {
        out.push_back(
            {s.integer(0), s.integer(1), static_cast<int>(s.integer(2)), s.text(3), s.text(4)});
    }
    return out;
}

}  // namespace

Result<std::vector<Event>> StateStore::newest_events(int limit) {
    Statement s(db_,
                "SELECT id, at_ms, port, kind, message FROM (SELECT * FROM events "
                "ORDER BY id DESC LIMIT ?1) ORDER BY id");
    if (!s.ok()) return s.error("reading events");
    s.bind(1, limit);
    return read_events(s);
}

Result<std::vector<Event>> StateStore::events_after(std::int64_t after_id, int limit) {
    Statement s(db_,
                "SELECT id, at_ms, port, kind, message FROM events WHERE id > ?1 ORDER BY id "
                "LIMIT ?2");
    if (!s.ok()) return s.error("reading events");
    s.bind(1, after_id).bind(2, limit);
    return read_events(s);
}

Result<std::string> StateStore::meta(const std::string& key) {
    Statement s(db_, "SELECT value FROM meta WHERE key = ?1");
    if (!s.ok()) return s.error("reading " + key);
    s.bind(1, key);
    return s.step() == SQLITE_ROW ? s.text(0) : std::string();
}

Status StateStore::set_meta(const std::string& key, const std::string& value) {
    return run(
        db_, "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [&](Statement& s) { s.bind(1, key).bind(2, value); }, "saving " + key);
}

Result<std::string> StateStore::integrity_check() {
    Statement s(db_, "PRAGMA integrity_check");
    if (!s.ok() || s.step() != SQLITE_ROW) return s.error("integrity check");
    return s.text(0);
}

}  // namespace ensemble
