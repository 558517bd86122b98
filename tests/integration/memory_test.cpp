// The memory budget end to end: estimates against the measured footprint of real llama-server
// workers at several contexts and slot counts, and admission (refusal, all-or-nothing profiles,
// eviction) and runtime enforcement with fake engines of declared size.
#include <atomic>
#include <fstream>
#include <random>

#include "tests/fixtures/gguf_writer.h"
#include "tests/support/supervisor_fixture.h"

namespace ensemble::testing {
namespace {

class MemoryTest : public SupervisorFixture {
  protected:
    // Replaces the fixture's config: a supervisor section with `supervisor_extra`, the llama and
    // fake engines, and the given models and profiles sections (indented YAML lines).
    void write_config(const std::string& supervisor_extra, const std::string& models,
                      const std::string& profiles = "") {
        std::ofstream(dir_ / "ensemble.yaml")
            << "supervisor:\n"
            << "  state_dir: " << (dir_ / "state").string() << "\n"
            << "  run_dir: " << run_dir_.string() << "\n"
            << supervisor_extra
            << "engines:\n  llama:\n    preset: llama.cpp\n    binary: " << llama_server().string()
            << "\n    args: [--threads, \"2\"]\n"
            << "  fake:\n    preset: command\n    command: \"" << ENSEMBLE_TEST_FAKE_ENGINE_BIN
            << " --port {port} --model {handle}\"\n    ready_path: /health\n"
            << "models:\n"
            << models << (profiles.empty() ? "" : "profiles:\n" + profiles);
    }

    // A fake model of declared size: the budget charges what `memory:` says.
    static std::string fake_model(const std::string& handle, const std::string& memory,
                                  const std::string& extra = "") {
        return "  " + handle + ": {engine: fake, path: none, memory: " + memory +
               (extra.empty() ? "" : ", " + extra) + "}\n";
    }

    std::string events_text() { return cli("events -n 200").out; }

    // Once the running workers have reported their footprint: rewrites the config with a budget
    // `headroom_mib` above it (plus `extra` supervisor lines) and reloads it.
    void reload_with_budget_above_measured(int headroom_mib, const std::string& extra,
                                           const std::string& models) {
        std::this_thread::sleep_for(2500ms);  // two heartbeats
        const auto measured =
            json::parse(cli("--json budget").out)["result"]["measured_bytes"].get<std::uint64_t>();
        ASSERT_GT(measured, 0U);
        const auto budget_mib = measured / (1 << 20) + static_cast<std::uint64_t>(headroom_mib);
        write_config("  memory_budget: " + std::to_string(budget_mib) + "MiB\n" + extra, models);
        const auto reloaded = cli("reload");
        ASSERT_EQ(reloaded.exit_code, 0) << reloaded.out;
    }

    bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (done()) return true;
            std::this_thread::sleep_for(100ms);
        }
        return done();
    }
};

// Letters and spaces: about one token per character with the generated vocabularies.
std::string prompt_of(std::size_t length) {
    std::mt19937 random(7);
    std::string text;
    while (text.size() < length)
        text += (random() % 6 == 0) ? ' ' : static_cast<char>('a' + random() % 26);
    return text;
}

struct AccuracyCase {
    std::string shape;
    int context;
    int parallel;
};

TEST_F(MemoryTest, EstimateMatchesMeasuredLlamaServerWithin15Percent) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "an AddressSanitizer worker uses ~80 MB more than the real one; the accuracy "
                    "is asserted in the regular build";
#endif
    // A grouped-query model (~62 MB, F16) and the benchmark shape (~269 MB, F16).
    std::map<std::string, ModelShape> shapes;
    shapes["gqa"] = *named_shape("gqa");
    shapes["bench"] = *named_shape("bench");
    const std::vector<AccuracyCase> cases = {
        {"gqa", 1024, 1}, {"gqa", 1024, 4},   {"gqa", 4096, 1},  {"gqa", 4096, 4},
        {"gqa", 8192, 2}, {"bench", 2048, 1}, {"bench", 8192, 4}};
    std::string models;
    for (const auto& [name, shape] : shapes) {
        ASSERT_TRUE(write_llama_model(dir_ / (name + ".gguf"), shape));
    }
    for (const auto& c : cases) {
        models += "  " + c.shape + "-c" + std::to_string(c.context) + "-p" +
                  std::to_string(c.parallel) +
                  ": {engine: llama, path: " + (dir_ / (c.shape + ".gguf")).string() +
                  ", context: " + std::to_string(c.context) +
                  ", parallel: " + std::to_string(c.parallel) + "}\n";
    }
    write_config("", models);
    supervisor_ = start_supervisor();

    std::ofstream report(
        std::filesystem::path(ENSEMBLE_TEST_BUILD_DIR) / "test-output" / "memory-accuracy.jsonl",
        std::ios::app);
    for (const auto& c : cases) {
        const auto handle =
            c.shape + "-c" + std::to_string(c.context) + "-p" + std::to_string(c.parallel);
        auto loaded = cli("load " + std::to_string(port_a_) + " " + handle);
        ASSERT_EQ(loaded.exit_code, 0) << loaded.out;
        // Steady state: every slot busy at once with prompts that together fill a micro-batch
        // where the slots allow, then two heartbeats for the measurement to follow.
        const auto slot = static_cast<std::size_t>(c.context / c.parallel);
        const auto length = std::min<std::size_t>(600 / c.parallel + 64, slot / 2);
        const json body = {{"messages", {{{"role", "user"}, {"content", prompt_of(length)}}}},
                           {"max_tokens", 4}};
        std::vector<std::thread> clients;
        std::atomic<int> answered{0};
        for (int i = 0; i < c.parallel; ++i) {
            clients.emplace_back([&] {
                if (http_request(port_a_, chat_request(body.dump())).status == 200) ++answered;
            });
        }
        for (auto& t : clients)
            t.join();
        EXPECT_EQ(answered, c.parallel);
        std::this_thread::sleep_for(2500ms);
        const auto p = port_status(port_a_);
        const double estimate = p.value("memory_estimate_bytes", 0.0);
        const double measured = p.value("memory_bytes", 0.0);
        ASSERT_GT(measured, 0) << p.dump();
        const double error = (estimate - measured) / measured;
        std::printf(
            "%-16s context %5d parallel %d: estimate %7.1f MiB, measured %7.1f MiB, "
            "error %+5.1f%%\n",
            c.shape.c_str(), c.context, c.parallel, estimate / 1048576, measured / 1048576,
            100 * error);
        report << json{{"model", c.shape},
                       {"context", c.context},
                       {"parallel", c.parallel},
                       {"estimate_bytes", estimate},
                       {"measured_bytes", measured},
                       {"error", error},
                       {"parts", p["memory_estimate"]}}
                      .dump()
               << '\n';
        EXPECT_LT(std::abs(error), 0.15) << handle << ": " << p.dump();
        ASSERT_EQ(cli("unload " + std::to_string(port_a_)).exit_code, 0);
    }
}

TEST_F(MemoryTest, LoadAndSwapOverBudgetAreRefusedNamingBudgetHoldersAndShortfall) {
    write_config("  memory_budget: 1GiB\n", fake_model("small-a", "600MiB") +
                                                fake_model("small-b", "600MiB") +
                                                fake_model("huge", "3GiB"));
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " small-a").exit_code, 0);
    const auto pid = port_status(port_a_).value("pid", 0);

    const auto refused = cli("load " + std::to_string(port_b_) + " small-b");
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_NE(refused.out.find("1.0 GiB memory budget"), std::string::npos) << refused.out;
    EXPECT_NE(refused.out.find(std::to_string(port_a_) + " 'small-a'"), std::string::npos)
        << refused.out;
    EXPECT_NE(refused.out.find("short by 176.0 MiB"), std::string::npos) << refused.out;
    EXPECT_TRUE(port_status(port_b_).is_null()) << "a refused load must not leave a port behind";

    const auto swap = cli("swap " + std::to_string(port_a_) + " huge");
    EXPECT_NE(swap.exit_code, 0);
    EXPECT_NE(swap.out.find("'huge' on port " + std::to_string(port_a_)), std::string::npos)
        << swap.out;
    // Nothing stopped: the same worker still serves the old model.
    const auto after = port_status(port_a_);
    EXPECT_EQ(after.value("pid", 0), pid);
    EXPECT_EQ(after.value("model", ""), "small-a");
    EXPECT_EQ(after.value("state", ""), "ready");
    EXPECT_EQ(chat(port_a_), 200);
    EXPECT_NE(events_text().find("budget_refused"), std::string::npos);

    // A swap to a model that fits once the old one is gone is fine.
    EXPECT_EQ(cli("swap " + std::to_string(port_a_) + " small-b").exit_code, 0);
    const auto budget = json::parse(cli("--json budget").out)["result"];
    EXPECT_EQ(budget["budget_bytes"], 1ULL << 30);
    EXPECT_EQ(budget["reserved_bytes"], 600ULL << 20);
    EXPECT_EQ(budget["free_bytes"], (1ULL << 30) - (600ULL << 20));
    ASSERT_EQ(budget["ports"].size(), 1U);
    EXPECT_NEAR(budget["ports"][0]["share"].get<double>(), 600.0 / 1024, 0.001);
    EXPECT_GT(budget["measured_bytes"].get<std::uint64_t>(), 0U);
}

// Found by an adversarial run: after a supervisor restart the re-adopted ports were charged 0,
// so a load that did not fit was accepted.
TEST_F(MemoryTest, ReadoptedPortsStillCountAgainstTheBudget) {
    write_config("  memory_budget: 1GiB\n",
                 fake_model("small-a", "600MiB") + fake_model("small-b", "600MiB"));
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " small-a").exit_code, 0);
    const auto pid = port_status(port_a_).value("pid", 0);
    ::kill(supervisor_->pid(), SIGQUIT);  // exits; the worker keeps serving
    ASSERT_TRUE(wait_exit(*supervisor_, 10s));
    supervisor_ = start_supervisor();
    ASSERT_TRUE(
        wait_until([&] { return port_status(port_a_).value("state", "") == "ready"; }, 10s));
    ASSERT_EQ(port_status(port_a_).value("pid", 0), pid) << "re-adopted";
    const auto refused = cli("load " + std::to_string(port_b_) + " small-b");
    EXPECT_NE(refused.exit_code, 0) << refused.out;
    EXPECT_NE(refused.out.find("short by 176.0 MiB"), std::string::npos) << refused.out;
    const auto budget = json::parse(cli("--json budget").out)["result"];
    EXPECT_EQ(budget["reserved_bytes"], 600ULL << 20);
}

TEST_F(MemoryTest, ProfileLoadOverBudgetChangesNothing) {
    const auto a = std::to_string(port_a_);
    const auto b = std::to_string(port_b_);
    write_config(
        "  memory_budget: 1GiB\n", fake_model("small-a", "300MiB") + fake_model("half", "600MiB"),
        "  one:\n    " + a + ": small-a\n  both:\n    " + a + ": half\n    " + b + ": half\n");
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load one").exit_code, 0);
    const auto pid = port_status(port_a_).value("pid", 0);
    const auto refused = cli("profile load both");
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_NE(refused.out.find("needs 1.2 GiB"), std::string::npos) << refused.out;
    // All or nothing: port a still serves small-a from the same worker, b never started, and
    // the persisted assignments are unchanged (a restart brings back profile 'one').
    EXPECT_EQ(port_status(port_a_).value("pid", 0), pid);
    EXPECT_TRUE(port_status(port_b_).is_null());
    ::kill(supervisor_->pid(), SIGTERM);
    ASSERT_TRUE(wait_exit(*supervisor_, 60s));
    supervisor_ = start_supervisor();
    EXPECT_TRUE(
        wait_until([&] { return port_status(port_a_).value("state", "") == "ready"; }, 20s));
    EXPECT_EQ(port_status(port_a_).value("model", ""), "small-a");
    EXPECT_TRUE(port_status(port_b_).is_null());
}

TEST_F(MemoryTest, BootProfileOverBudgetIsNotLoadedAndSaysWhy) {
    write_config("  memory_budget: 1GiB\n  boot_profile: too-big\n", fake_model("half", "600MiB"),
                 "  too-big:\n    " + std::to_string(port_a_) + ": half\n    " +
                     std::to_string(port_b_) + ": half\n");
    supervisor_ = start_supervisor();
    EXPECT_TRUE(
        wait_until([&] { return events_text().find("budget_refused") != std::string::npos; }, 10s));
    EXPECT_NE(events_text().find("boot profile 'too-big' not loaded"), std::string::npos)
        << events_text();
    EXPECT_TRUE(status()["ports"].empty());
}

TEST_F(MemoryTest, CheckReportsEachProfilesEstimateAndFailsWhenOneCannotFit) {
    const auto a = std::to_string(port_a_);
    const auto b = std::to_string(port_b_);
    write_config("  memory_budget: 1GiB\n",
                 fake_model("half", "600MiB") + "  tiny-real: {engine: llama, path: " +
                     tiny_model().string() + ", context: 2048, parallel: 2}\n",
                 "  fits:\n    " + a + ": half\n    " + b + ": tiny-real\n  too-big:\n    " + a +
                     ": half\n    " + b + ": half\n");
    auto check = cli("check " + (dir_ / "ensemble.yaml").string());
    EXPECT_EQ(check.exit_code, 1) << check.out;
    EXPECT_NE(check.out.find("profile 'fits': 6"), std::string::npos) << check.out;
    EXPECT_NE(check.out.find("of the 1.0 GiB budget"), std::string::npos) << check.out;
    EXPECT_NE(check.out.find("error: profile 'too-big' needs 1.2 GiB, over the 1.0 GiB"),
              std::string::npos)
        << check.out;
    write_config("  memory_budget: 2GiB\n", fake_model("half", "600MiB"),
                 "  too-big:\n    " + a + ": half\n    " + b + ": half\n");
    check = cli("check " + (dir_ / "ensemble.yaml").string());
    EXPECT_EQ(check.exit_code, 0) << check.out;
}

TEST_F(MemoryTest, IdleEvictablePortsMakeRoomLeastRecentlyUsedFirst) {
    const auto ports = free_ports(3);
    write_config(
        "  memory_budget: 1GiB\n  evict_idle_after: 1s\n",
        fake_model("old", "400MiB", "evict: idle") + fake_model("recent", "400MiB", "evict: idle") +
            fake_model("pinned", "100MiB") + fake_model("important", "400MiB", "priority: 5"));
    supervisor_ = start_supervisor();
    for (const auto& [port, model] : std::vector<std::pair<unsigned short, std::string>>{
             {ports[0], "old"}, {ports[1], "recent"}, {ports[2], "pinned"}}) {
        ASSERT_EQ(cli("load " + std::to_string(port) + " " + model).exit_code, 0);
    }
    // A port's last use is when a heartbeat shows ensembled a request (up to a second after it):
    // each request is waited for until ensembled has seen it, so that the order is sure.
    const auto serve_and_wait_seen = [&](unsigned short port) {
        const auto before = port_status(port).value("requests", 0);
        EXPECT_EQ(chat(port), 200);
        for (int i = 0; i < 150 && port_status(port).value("requests", 0) == before; ++i)
            std::this_thread::sleep_for(20ms);
    };
    serve_and_wait_seen(ports[0]);
    std::this_thread::sleep_for(300ms);
    serve_and_wait_seen(ports[1]);        // 'old' is now the least recently used
    std::this_thread::sleep_for(2500ms);  // both idle

    const auto loaded = cli("load " + std::to_string(port_a_) + " important");
    ASSERT_EQ(loaded.exit_code, 0) << loaded.out;
    EXPECT_TRUE(port_status(ports[0]).is_null()) << "the LRU idle port is evicted";
    EXPECT_EQ(port_status(ports[1]).value("state", ""), "ready");
    EXPECT_EQ(port_status(ports[2]).value("state", ""), "ready");
    const auto events = events_text();
    EXPECT_NE(events.find("evict"), std::string::npos) << events;
    EXPECT_NE(events.find("'old' evicted to make room for important"), std::string::npos) << events;

    // 'old' again: 'recent' is now the only idle evictable port, so it goes.
    ASSERT_EQ(cli("load " + std::to_string(ports[0]) + " old").exit_code, 0);
    EXPECT_TRUE(port_status(ports[1]).is_null());
    EXPECT_EQ(port_status(port_a_).value("state", ""), "ready");

    // Now nothing is idle and evictable ('old' has just served, and a heartbeat has said so;
    // under a sanitizer its load and the status calls alone can outlast the 1 s idle limit):
    // refused, nothing evicted.
    serve_and_wait_seen(ports[0]);
    const auto refused = cli("load " + std::to_string(ports[1]) + " recent");
    EXPECT_NE(refused.exit_code, 0) << refused.out;
    EXPECT_EQ(port_status(ports[0]).value("state", ""), "ready");
    EXPECT_EQ(port_status(ports[2]).value("state", ""), "ready");
}

TEST_F(MemoryTest, MeasuredOverBudgetIsAWarningAndStopsTheLowestPriorityPort) {
    const std::string models =
        "  hog: {engine: fake, path: none, memory: 20MiB, args: [--grow-mb, \"100\"]}\n" +
        fake_model("keeper", "20MiB", "priority: 5");
    write_config("", models);
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " hog").exit_code, 0);
    ASSERT_EQ(cli("load " + std::to_string(port_b_) + " keeper").exit_code, 0);
    // A budget 100 MiB above what the two use now (sanitizer builds use much more), applied by
    // a reload: the hog's 200 MiB of growth passes it.
    reload_with_budget_above_measured(100, "  over_budget: stop-lowest\n", models);
    EXPECT_EQ(chat(port_a_), 200);
    EXPECT_EQ(chat(port_a_), 200);
    ASSERT_TRUE(
        wait_until([&] { return events_text().find("over_budget") != std::string::npos; }, 10s))
        << events_text();
    EXPECT_TRUE(
        wait_until([&] { return port_status(port_a_).value("state", "") == "stopped"; }, 20s))
        << port_status(port_a_).dump();
    EXPECT_EQ(port_status(port_b_).value("state", ""), "ready");
    const auto events = events_text();
    EXPECT_NE(events.find("over_budget: stop-lowest"), std::string::npos) << events;
    EXPECT_TRUE(wait_until(
        [&] { return events_text().find("within the budget again") != std::string::npos; }, 10s));
    // The operator takes it back: it fits again (fresh, without its growth) and is reassigned.
    const auto back = cli("restart " + std::to_string(port_a_));
    EXPECT_EQ(back.exit_code, 0) << back.out;
    EXPECT_EQ(port_status(port_a_).value("state", ""), "ready");
}

TEST_F(MemoryTest, MeasuredOverBudgetWithoutEnforcementIsAWarningInStatus) {
    const std::string models =
        "  hog: {engine: fake, path: none, memory: 20MiB, args: [--grow-mb, \"150\"]}\n";
    write_config("", models);
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " hog").exit_code, 0);
    reload_with_budget_above_measured(100, "", models);
    EXPECT_TRUE(status()["warnings"].empty());
    EXPECT_EQ(chat(port_a_), 200);
    ASSERT_TRUE(wait_until([&] { return !status()["warnings"].empty(); }, 10s));
    const auto text = cli("status").out;
    EXPECT_NE(text.find("warning: measured memory"), std::string::npos) << text;
    EXPECT_EQ(port_status(port_a_).value("state", ""), "ready") << "warn only: nothing stops";
}

}  // namespace
}  // namespace ensemble::testing
