// A fleet on a pretend machine (fake_system.h), driven as ensembled drives it: reconcile at
// start, tick every 500 ms and on each worker's exit, workers that register and report `ready`
// every second (unless a test silences them), and control commands with time passing until
// they answer.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <fstream>

#include "protocol/messages.h"
#include "state/store.h"
#include "supervisor/control_api.h"
#include "supervisor/fleet.h"
#include "tests/support/fake_system.h"

namespace ensemble::testing {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr int kA = 8100, kB = 8101, kC = 8102, kD = 8103;

// Workers that register as soon as they start and report `ready` every second (the autopilot)
// unless the test says otherwise.
class FleetFixture : public ::testing::Test {
  protected:
    void SetUp() override {
        spdlog::set_level(spdlog::level::warn);  // the fleet's info lines: see the events
        const auto base = std::filesystem::exists("/dev/shm")
                              ? std::filesystem::path("/dev/shm")
                              : std::filesystem::temp_directory_path();
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = base / ("ensemble-fleet-test-" + std::to_string(::getpid()) + "-" + info->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_ / "state");
        auto store = StateStore::open(dir_ / "state" / "state.db");
        ASSERT_TRUE(store) << store.error().message;
        store_ = std::move(store).value();
    }

    void TearDown() override {
        api_.reset();
        fleet_.reset();
        std::filesystem::remove_all(dir_);
    }

    // The config: every model 3 GiB on the fake command engine unless `models` adds others.
    void start(const std::string& supervisor_settings = "", const std::string& models = "",
               const std::string& profiles = "") {
        std::ofstream(dir_ / "ensemble.yaml")
            << "supervisor:\n"
            << "  state_dir: " << (dir_ / "state").string() << "\n"
            << "  run_dir: " << (dir_ / "run").string() << "\n"
            << (supervisor_settings.find("health:") == std::string::npos
                    ? "  health: {probe_interval: 0s}\n"
                    : "")
            << supervisor_settings << "engines:\n  fake:\n    preset: command\n"
            << "    command: \"fake-engine --port {port} --model {handle}\"\n"
            << "  proxy:\n    preset: command\n"
            << "    command: \"fake-proxy --port {port} --to {upstream_url}\"\n"
            << "models:\n"
            << "  a: {engine: fake, path: none, memory: 3GiB}\n"
            << "  b: {engine: fake, path: none, memory: 3GiB}\n"
            << "  dead: {engine: fake, path: none, memory: 3GiB}\n"
            << models << "profiles:\n"
            << "  pair: {" << kA << ": a, " << kB << ": b}\n"
            << profiles;
        auto loaded = load_config(dir_ / "ensemble.yaml", false);
        ASSERT_TRUE(loaded.config) << (loaded.issues.empty() ? "" : loaded.issues[0].to_string());
        world_.dead_on_arrival.insert("dead");  // its engine cannot load the model
        auto time = std::make_unique<FakeScheduler>(io_);
        time_ = time.get();
        world_.clock = time_;
        // SIGCHLD, as ensembled handles it: a tick on the loop.
        // and its links close with it, as the kernel closes a dead process's sockets.
        world_.on_worker_end = [this] {
            asio::post(io_, [this] {
                for (auto& [pid, played] : played_) {
                    const auto worker = world_.workers.find(pid);
                    if (played.link && worker != world_.workers.end() && worker->second->exit &&
                        !played.link->closed) {
                        played.link->closed = true;
                        fleet_->on_link_closed(played.link.get());
                    }
                }
                fleet_->tick();
            });
        };
        fleet_ = std::make_unique<Fleet>(
            io_, std::move(*loaded.config), std::move(store_),
            Fleet::System{std::move(time), std::make_unique<FakeProcesses>(world_),
                          std::make_unique<FakeLauncher>(world_)});
        api_ = std::make_unique<ControlApi>(*fleet_);
        tick_every_half_second();
        fleet_->reconcile();
        time_->run_ready();
    }

    void tick_every_half_second() {
        time_->after(500ms, [this] {
            fleet_->tick();
            tick_every_half_second();
        });
    }

    // Time passes in steps of 100 ms; the workers play their part after each.
    void advance(std::chrono::milliseconds by) {
        const auto end = time_->now() + by;
        while (time_->now() < end) {
            time_->advance_to(std::min(end, time_->now() + 100ms));
            play_workers();
        }
    }

    using Clock = Scheduler::Clock;

    struct Played {
        std::unique_ptr<FakeLink> link;
        Clock::time_point last_heartbeat{};
        std::uint64_t requests = 0;
        std::uint32_t in_flight = 0;
    };

    void play_workers() {
        for (const auto& [pid, worker] : world_.workers) {
            if (worker->exit || silent_.contains(worker->handle) ||
                worker->launch.worker_id.empty())
                continue;
            auto& played = played_[pid];
            if (!played.link) {
                played.link = std::make_unique<FakeLink>(world_, worker);
                auto ok = fleet_->on_register(played.link.get(), registration(*worker));
                if (!ok) continue;  // refused: it was told to stop
            }
            if (time_->now() - played.last_heartbeat >= 1s) {
                protocol::WorkerStats stats;
                stats.state = "ready";
                stats.requests = played.requests;
                stats.in_flight = played.in_flight;
                stats.memory_bytes = measured_memory;
                fleet_->on_heartbeat(played.link.get(), stats);
                played.last_heartbeat = time_->now();
            }
        }
        time_->run_ready();
    }

    static protocol::Register registration(const FakeWorker& w) {
        protocol::Register r;
        r.worker_id = w.launch.worker_id;
        r.token = w.launch.token;
        r.port = w.port;
        r.pid = w.pid;
        r.handle = w.handle;
        r.files = w.slot.files;
        return r;
    }

    std::uint64_t measured_memory = 0;  // what each worker's heartbeat says it holds

    // A request served by the port's worker (its next heartbeat says so).
    void serve(int port) { ++played_[world_.newest_on(port)->pid].requests; }
    // Requests the port's worker is answering now (its next heartbeat says so).
    void set_in_flight(int port, std::uint32_t n) {
        played_[world_.newest_on(port)->pid].in_flight = n;
    }

    // One control command, begun: its reply is set once it answers (as time passes).
    std::shared_ptr<std::optional<json>> begin_command(protocol::Verb verb, int port = 0,
                                                       const std::string& model = "",
                                                       const std::string& profile = "") {
        // The command holds on to its request until it answers.
        auto request = std::make_shared<protocol::ControlRequest>();
        request->verb = verb;
        if (port != 0) request->port = port;
        request->model = model;
        request->profile = profile;
        request->lines = 1000;
        auto reply = std::make_shared<std::optional<json>>();
        asio::co_spawn(io_, api_->handle(*request), [reply, request](std::exception_ptr e, json j) {
            if (e) std::rethrow_exception(e);
            *reply = std::move(j);
        });
        return reply;
    }

    // One control command, with time passing until it answers.
    json command(protocol::Verb verb, int port = 0, const std::string& model = "",
                 const std::string& profile = "") {
        const auto reply = begin_command(verb, port, model, profile);
        for (int step = 0; !*reply && step < 20 * 60 * 10; ++step)
            advance(100ms);
        EXPECT_TRUE(*reply) << "no answer in 20 minutes";
        return reply->value_or(json{});
    }

    json port_status(int port) {
        const auto status = command(protocol::Verb::status);
        for (const auto& p : status["result"]["ports"]) {
            if (p["port"] == port) return p;
        }
        return json{};
    }

    std::vector<std::string> events_of_kind(const std::string& kind) {
        std::vector<std::string> out;
        const auto events = command(protocol::Verb::events);
        for (const auto& e : events["result"]["events"]) {
            if (e["kind"] == kind) out.push_back(e["message"]);
        }
        return out;
    }

    // What the state database holds now (read through a second connection).
    std::vector<Assignment> store_assignments() {
        auto store = StateStore::open(dir_ / "state" / "state.db");
        EXPECT_TRUE(store);
        auto assigned = (*store)->assignments();
        EXPECT_TRUE(assigned);
        return assigned ? *assigned : std::vector<Assignment>{};
    }

    std::vector<WorkerRecord> store_records() {
        auto store = StateStore::open(dir_ / "state" / "state.db");
        EXPECT_TRUE(store);
        auto records = (*store)->workers();
        EXPECT_TRUE(records);
        return records ? *records : std::vector<WorkerRecord>{};
    }

    std::filesystem::path dir_;
    std::unique_ptr<StateStore> store_;  // until start() hands it to the fleet
    FakeWorld world_;
    asio::io_context io_;
    FakeScheduler* time_ = nullptr;
    std::unique_ptr<Fleet> fleet_;
    std::unique_ptr<ControlApi> api_;
    std::set<std::string> silent_;  // models whose workers never register
    std::map<pid_t, Played> played_;
};

}  // namespace ensemble::testing
