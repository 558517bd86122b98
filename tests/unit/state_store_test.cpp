// The state store: migrations, assignments, workers, events, and durability under kill -9.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "state/store.h"

using namespace ensemble;

namespace {

class StateStoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = std::filesystem::temp_directory_path() / "ensemble-state" / info->name();
        std::filesystem::remove_all(dir_);
        path_ = dir_ / "state.db";
    }
    std::unique_ptr<StateStore> open() {
        auto s = StateStore::open(path_);
        EXPECT_TRUE(s) << (s ? "" : s.error().message);
        return s ? std::move(s).value() : nullptr;
    }
    std::filesystem::path dir_, path_;
};

TEST_F(StateStoreTest, NewDatabaseIsMigratedToTheCurrentSchema) {
    auto s = open();
    ASSERT_TRUE(s);
    EXPECT_EQ(*s->integrity_check(), "ok");
    EXPECT_TRUE(s->assignments()->empty());
    s.reset();
    EXPECT_TRUE(open());  // reopening runs no migration twice
}

TEST_F(StateStoreTest, RefusesADatabaseFromANewerVersion) {
    open().reset();
    {
        auto s = open();
        ASSERT_TRUE(s->set_meta("x", "y"));
    }
    // Pretend a newer ensembled migrated it.
    std::string cmd = "sqlite3 '" + path_.string() + "' 'PRAGMA user_version=99'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    auto s = StateStore::open(path_);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, "state_newer");
}

TEST_F(StateStoreTest, AnEarlierReleasesWorkerRecordsSurviveTheMigration) {
    {
        auto s = open();
        WorkerRecord w;
        w.port = 8100;
        w.worker_id = "w-1";
        ASSERT_TRUE(s->save_worker(w));
    }
    // The database as version 3 left it: no upstream columns, no keep_alive.
    std::string cmd = "sqlite3 '" + path_.string() +
                      "' 'ALTER TABLE workers DROP COLUMN upstream_url; ALTER TABLE workers DROP "
                      "COLUMN upstream_port; ALTER TABLE workers DROP COLUMN upstream_handle; "
                      "DROP TABLE kept_alive; PRAGMA user_version=3'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    auto s = open();
    ASSERT_TRUE(s);
    auto ws = *s->workers();
    ASSERT_EQ(ws.size(), 1U);
    EXPECT_EQ(ws[0].worker_id, "w-1");
    EXPECT_EQ(ws[0].upstream_port, 0) << "recorded before chained models: none";
    WorkerRecord proxy;
    proxy.port = 8101;
    proxy.upstream_port = 8100;
    ASSERT_TRUE(s->save_worker(proxy));
    EXPECT_EQ(s->workers()->at(1).upstream_port, 8100);
    EXPECT_TRUE(s->kept_alive()->empty());
    ASSERT_TRUE(s->save_kept_alive({8110, "w-2", "tiny", -1, 1'790'000'000'000}));
    ASSERT_TRUE(s->save_kept_alive({8110, "w-2", "tiny", 300, 1'790'000'001'000}));  // replaced
    ASSERT_TRUE(s->save_kept_alive({8111, "w-3", "big", 0, 1'790'000'002'000}));
    ASSERT_TRUE(s->remove_kept_alive(8111));
    const auto kept = *s->kept_alive();
    ASSERT_EQ(kept.size(), 1U);
    EXPECT_EQ(kept[0].worker_id, "w-2");
    EXPECT_EQ(kept[0].limit_s, 300);
    EXPECT_EQ(kept[0].since_ms, 1'790'000'001'000);
}

TEST_F(StateStoreTest, AssignmentsBumpTheirGenerationOnChange) {
    auto s = open();
    ASSERT_TRUE(s->set_assignment({8100, "tiny", "demo", 0}));
    ASSERT_TRUE(s->set_assignment({8101, "big", "demo", 0}));
    ASSERT_TRUE(s->set_assignment({8100, "other", "", 0}));
    auto a = *s->assignments();
    ASSERT_EQ(a.size(), 2U);
    EXPECT_EQ(a[0].handle, "other");
    EXPECT_EQ(a[0].generation, 2);
    EXPECT_EQ(a[1].generation, 1);
    ASSERT_TRUE(s->remove_assignment(8101));
    EXPECT_EQ(s->assignments()->size(), 1U);
}

TEST_F(StateStoreTest, ReplaceAssignmentsKeepsUnchangedPortsGeneration) {
    auto s = open();
    ASSERT_TRUE(s->replace_assignments({{8100, "a", "p1", 0}, {8101, "b", "p1", 0}}));
    ASSERT_TRUE(s->replace_assignments({{8100, "a", "p2", 0}, {8102, "c", "p2", 0}}));
    auto a = *s->assignments();
    ASSERT_EQ(a.size(), 2U);
    EXPECT_EQ(a[0].port, 8100);
    EXPECT_EQ(a[0].generation, 1);
    EXPECT_EQ(a[0].profile, "p2");
    EXPECT_EQ(a[1].port, 8102);
    ASSERT_TRUE(s->replace_assignments({}));
    EXPECT_TRUE(s->assignments()->empty());
}

TEST_F(StateStoreTest, WorkerRecordsRoundTrip) {
    auto s = open();
    const WorkerRecord w{.port = 8100,
                         .handle = "tiny",
                         .worker_id = "w-1",
                         .token = "tok",
                         .pid = 123,
                         .pid_start_time = 456,
                         .engine_pid = 789,
                         .engine_start_time = 790,
                         .engine_group = 789,
                         .slot = 1,
                         .upstream_handle = "coder",
                         .upstream_port = 8101,
                         .upstream_url = "http://127.0.0.1:8101/v1",
                         .state = "ready",
                         .started_at_ms = 1,
                         .ready_at_ms = 2,
                         .restarts = 3,
                         .last_exit = "exit code 1"};
    ASSERT_TRUE(s->save_worker(w));
    auto ws = *s->workers();
    ASSERT_EQ(ws.size(), 1U);
    EXPECT_EQ(ws[0].token, "tok");
    EXPECT_EQ(ws[0].pid_start_time, 456);
    EXPECT_EQ(ws[0].engine_start_time, 790) << "the engine's identity, for a dead worker's engine";
    EXPECT_EQ(ws[0].engine_group, 789);
    EXPECT_EQ(ws[0].slot, 1) << "the set of files its logs and engine record are in";
    EXPECT_EQ(ws[0].last_exit, "exit code 1");
    EXPECT_EQ(ws[0].upstream_handle, "coder") << "what a re-adopted proxy runs in front of";
    EXPECT_EQ(ws[0].upstream_port, 8101);
    EXPECT_EQ(ws[0].upstream_url, "http://127.0.0.1:8101/v1");
    ASSERT_TRUE(s->remove_worker(8100));
    EXPECT_TRUE(s->workers()->empty());
}

TEST_F(StateStoreTest, EventsAreAppendOnlyWithRetention) {
    auto s = open();
    s->event_retention = 5;
    for (int i = 0; i < 12; ++i)
        ASSERT_TRUE(s->append_event({0, 0, 8100, "test", std::to_string(i)}));
    auto e = *s->newest_events(100);
    ASSERT_EQ(e.size(), 5U);
    EXPECT_EQ(e.front().message, "7");
    EXPECT_EQ(e.back().message, "11");
    auto after = *s->events_after(e[2].id, 100);
    EXPECT_EQ(after.size(), 2U);
    // A follower reads on from its cursor, oldest first, skipping none.
    auto next = *s->events_after(e[0].id, 2);
    ASSERT_EQ(next.size(), 2U);
    EXPECT_EQ(next[0].message, "8");
    EXPECT_EQ(next[1].message, "9");
    EXPECT_EQ(s->newest_events(2)->front().message, "10");
}

// A child writes assignments as fast as it can and reports each one after its commit returns;
// the parent kills it with SIGKILL mid-stream. Every reported write must survive, and the
// database must pass PRAGMA integrity_check.
TEST_F(StateStoreTest, KillDashNineMidWriteLosesNothingCommitted) {
    open().reset();
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        auto s = StateStore::open(path_);
        if (!s) ::_exit(1);
        for (int i = 0;; ++i) {
            const int port = 1000 + i % 5000;
            if (!(*s)->set_assignment({port, "model-" + std::to_string(i), "p", 0})) ::_exit(2);
            if (!(*s)->append_event({0, 0, port, "write", std::to_string(i)})) ::_exit(3);
            if (::write(pipe_fds[1], &i, sizeof i) != sizeof i) ::_exit(4);
        }
    }
    ::close(pipe_fds[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself: " << WEXITSTATUS(status);
    int last = -1;
    for (int i = 0; ::read(pipe_fds[0], &i, sizeof i) == sizeof i;)
        last = i;
    ::close(pipe_fds[0]);
    ASSERT_GT(last, 10) << "too few writes to mean anything";

    auto s = open();
    ASSERT_TRUE(s);
    EXPECT_EQ(*s->integrity_check(), "ok");
    std::map<int, std::string> by_port;
    const auto stored_assignments = s->assignments();
    ASSERT_TRUE(stored_assignments);
    for (const auto& a : *stored_assignments)
        by_port[a.port] = a.handle;
    // The last write of each port that the child confirmed is there (or a later one).
    for (int i = std::max(0, last - 4999); i <= last; ++i) {
        const int port = 1000 + i % 5000;
        const auto it = by_port.find(port);
        ASSERT_NE(it, by_port.end()) << "port " << port << " lost";
        const int stored = std::stoi(it->second.substr(6));
        EXPECT_GE(stored, i) << "port " << port << " lost write " << i;
    }
}

}  // namespace

namespace {

// Overwrites the middle of the database file: pages SQLite can open but whose B-trees are broken.
void damage_pages(const std::filesystem::path& db) {
    const auto size = std::filesystem::file_size(db);
    std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2));
    const std::string garbage(4096, '\xA5');
    f.write(garbage.data(), static_cast<std::streamsize>(std::min<std::uintmax_t>(4096, size / 2)));
}

void fill(StateStore& s, int ports) {
    std::vector<Assignment> all;
    for (int i = 0; i < ports; ++i)
        all.push_back({8000 + i, "model-with-a-long-enough-name-" + std::to_string(i), "p", 0});
    ASSERT_TRUE(s.replace_assignments(all));
}

}  // namespace

// Found by an adversarial run: with page damage ensembled started with 0 ports, forgetting every
// assignment. Damage is a refusal that says how to recover, and the backup recovers it.
TEST_F(StateStoreTest, ADamagedDatabaseIsRefusedAndTheBackupRestoresEverything) {
    {
        auto s = open();
        ASSERT_TRUE(s);
        fill(*s, 400);
        EXPECT_EQ(s->backup_problem(), "");
    }
    ASSERT_TRUE(std::filesystem::exists(StateStore::backup_path(path_)));
    EXPECT_EQ(std::filesystem::status(StateStore::backup_path(path_)).permissions() &
                  std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
        << "it holds the worker tokens too";
    damage_pages(path_);
    auto refused = StateStore::open(path_);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, "state_damaged");
    const auto& message = refused.error().message;
    EXPECT_NE(message.find(path_.string() + " is damaged"), std::string::npos) << message;
    EXPECT_NE(message.find("mv " + path_.string() + " " + path_.string() + ".damaged"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("cp " + StateStore::backup_path(path_).string()), std::string::npos)
        << message;
    // The recovery the message gives.
    std::filesystem::rename(path_, path_.string() + ".damaged");
    std::filesystem::remove(path_.string() + "-wal");
    std::filesystem::remove(path_.string() + "-shm");
    std::filesystem::copy_file(StateStore::backup_path(path_), path_);
    auto s = open();
    ASSERT_TRUE(s);
    EXPECT_EQ(s->assignments()->size(), 400U);
}

TEST_F(StateStoreTest, AFileThatIsNotADatabaseOrEmptyAfterUseIsRefused) {
    std::filesystem::create_directories(dir_);
    std::ofstream(path_) << std::string(8192, 'x');
    auto garbage = StateStore::open(path_);
    ASSERT_FALSE(garbage);
    EXPECT_EQ(garbage.error().code, "state_damaged");
    EXPECT_NE(garbage.error().message.find("cannot be read (file is not a database)"),
              std::string::npos)
        << garbage.error().message;
    std::filesystem::remove(path_);
    open().reset();  // used once: a backup exists now
    std::filesystem::resize_file(path_, 0);
    std::filesystem::remove(path_.string() + "-wal");
    auto empty = StateStore::open(path_);
    ASSERT_FALSE(empty);
    EXPECT_NE(empty.error().message.find("is empty (0 bytes) although it has been used before"),
              std::string::npos)
        << empty.error().message;
    std::filesystem::remove(path_);
    auto missing = StateStore::open(path_);
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("is missing although it has been used before"),
              std::string::npos)
        << missing.error().message;
    EXPECT_FALSE(std::filesystem::exists(path_)) << "nothing created in its place";
    // A fresh install (no backup either) starts empty, as it should.
    std::filesystem::remove_all(dir_);
    EXPECT_TRUE(open());
}

TEST_F(StateStoreTest, EveryChangeOfTheAssignmentsIsInTheBackup) {
    auto s = open();
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->set_assignment({8100, "coder", "", 0}));
    ASSERT_TRUE(s->replace_assignments({{8101, "chat", "p", 0}, {8102, "vision", "p", 0}}));
    ASSERT_TRUE(s->remove_assignment(8102));
    auto copy = StateStore::open(StateStore::backup_path(path_));
    ASSERT_TRUE(copy) << copy.error().message;
    const auto kept = *(*copy)->assignments();
    ASSERT_EQ(kept.size(), 1U);
    EXPECT_EQ(kept[0].port, 8101);
    EXPECT_EQ(kept[0].handle, "chat");
}

// A backup that cannot be written (a full disk, a folder in the way) never undoes the change it
// follows: the change is committed, and the problem is kept for `ensemble status` to show.
TEST_F(StateStoreTest, ABackupThatCannotBeWrittenLeavesTheChangeAndSaysSo) {
    std::filesystem::create_directories(std::filesystem::path(path_.string() + ".backup.partial") /
                                        "in-the-way");
    auto s = open();
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->set_assignment({8100, "coder", "", 0}));
    EXPECT_NE(s->backup_problem().find("the database itself is up to date"), std::string::npos)
        << s->backup_problem();
    EXPECT_FALSE(std::filesystem::exists(StateStore::backup_path(path_)));
    EXPECT_EQ(s->assignments()->size(), 1U);
    std::filesystem::remove_all(path_.string() + ".backup.partial");
    ASSERT_TRUE(s->set_assignment({8101, "chat", "", 0}));
    EXPECT_EQ(s->backup_problem(), "") << "the next change backs up again";
    EXPECT_TRUE(std::filesystem::exists(StateStore::backup_path(path_)));
}
