// Chained models with the real llama-server upstream: an OptiLLM-style proxy (the fake engine
// with OptiLLM's command line, run through the optillm preset) in front of another port's
// model. It starts once its upstream is ready, waits while it is gone, comes back with it,
// survives a kill -9 of ensembled, and does not crash-loop when its upstream does.
#include <filesystem>

#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

class ChainedModelTest : public SupervisorFixture {
  protected:
    std::string extra_supervisor_settings() const override {
        return "  restart: {first_backoff: 200ms, max_backoff: 400ms}\n";
    }
    std::string extra_engines() const override {
        return std::string("  optillm-here:\n    preset: optillm\n    binary: ") +
               ENSEMBLE_TEST_FAKE_ENGINE_BIN + "\n";
    }
    std::string extra_models() const override {
        return "  opt-tiny-moa: {engine: optillm-here, upstream: tiny, args: [--approach, moa]}\n"
               "  opt-dead: {engine: optillm-here, upstream: fake-dead}\n";
    }
    std::string extra_profiles() const override {
        // The proxy on the lower port: the profile still starts its upstream first.
        const auto [low, high] = std::minmax(port_a_, port_b_);
        return "  chain:\n    " + std::to_string(low) + ": opt-tiny-moa\n    " +
               std::to_string(high) + ": tiny\n";
    }

    unsigned short proxy_port() const { return std::min(port_a_, port_b_); }
    unsigned short upstream_port() const { return std::max(port_a_, port_b_); }

    // A chat completion through `port`, as a client names the proxy.
    HttpResponse ask(unsigned short port) {
        return http_request(port, chat_request(R"({"model":"opt-tiny-moa","messages":)"
                                               R"([{"role":"user","content":"hi"}],)"
                                               R"("max_tokens":4})"));
    }
};

TEST_F(ChainedModelTest, AProxyServesInFrontOfItsUpstreamWaitsWhileItIsGoneAndComesBack) {
    supervisor_ = start_supervisor();
    const auto proxy = proxy_port();
    const auto upstream = upstream_port();
    // Nothing serves tiny yet: a load of the proxy alone is refused, saying what to do.
    const auto alone = cli("load " + std::to_string(proxy) + " opt-tiny-moa");
    EXPECT_EQ(alone.exit_code, 1) << alone.out;
    EXPECT_NE(alone.out.find("runs in front of 'tiny', which no port serves"), std::string::npos)
        << alone.out;

    const auto loaded = cli("profile load chain");
    ASSERT_EQ(loaded.exit_code, 0) << loaded.out;
    auto p = port_status(proxy);
    EXPECT_EQ(p["state"], "ready") << p.dump();
    EXPECT_EQ(p["upstream"]["model"], "tiny") << p.dump();
    EXPECT_EQ(p["upstream"]["port"], upstream) << p.dump();
    EXPECT_EQ(p["memory_estimate"]["source"], "proxy") << p.dump();

    // The answer is the real llama-server's, asked three times (a mixture of agents).
    const auto answer = ask(proxy);
    ASSERT_EQ(answer.status, 200) << answer.body;
    const auto body = json::parse(answer.body, nullptr, false);
    ASSERT_FALSE(body.is_discarded()) << answer.body;
    EXPECT_TRUE(body["choices"][0]["message"]["content"].get<std::string>().starts_with("[moa] "))
        << answer.body;
    json up = json::object();
    for (int i = 0; i < 50 && up.value("requests", 0) < 3; ++i) {
        std::this_thread::sleep_for(100ms);
        up = port_status(upstream);
    }
    EXPECT_GE(up.value("requests", 0), 3) << "the upstream served the proxy's calls: " << up.dump();

    // ensembled killed: both workers are re-adopted as they are, the proxy not restarted.
    const auto proxy_pid = p["pid"];
    ::kill(supervisor_->pid(), SIGKILL);
    wait_exit(*supervisor_, 10s);
    supervisor_ = start_supervisor();
    p = wait_for_state(proxy, "ready");
    EXPECT_EQ(p["pid"], proxy_pid) << p.dump();
    std::this_thread::sleep_for(2s);  // a few ticks: nothing decides the upstream is gone
    p = port_status(proxy);
    EXPECT_EQ(p["pid"], proxy_pid) << p.dump();
    EXPECT_EQ(ask(proxy).status, 200);

    // The operator restarts the upstream: the proxy's calls wait in its backlog meanwhile; the
    // proxy itself is not restarted.
    const auto restarted = cli("restart " + std::to_string(upstream));
    ASSERT_EQ(restarted.exit_code, 0) << restarted.out;
    std::this_thread::sleep_for(1s);
    p = port_status(proxy);
    EXPECT_EQ(p["pid"], proxy_pid) << p.dump();
    EXPECT_EQ(p["state"], "ready") << p.dump();
    EXPECT_EQ(ask(proxy).status, 200);

    // The upstream unloaded: the proxy stops and waits, its port closed, with the reason.
    ASSERT_EQ(cli("unload " + std::to_string(upstream)).exit_code, 0);
    p = wait_for_state(proxy, "waiting");
    ASSERT_EQ(p["state"], "waiting") << p.dump();
    EXPECT_EQ(p["pid"], 0) << p.dump();
    // The reason follows what becomes of the upstream: stopping, then gone.
    const auto gone = [&] {
        return p["last_failure"].get<std::string>().find("'tiny' is not served on any port") !=
               std::string::npos;
    };
    for (int i = 0; i < 50 && !gone(); ++i) {
        std::this_thread::sleep_for(100ms);
        p = port_status(proxy);
    }
    EXPECT_TRUE(gone()) << p.dump();
    EXPECT_EQ(ask(proxy).status, 0) << "refused while it waits";
    const auto listed = cli("status");
    EXPECT_NE(listed.out.find("waiting"), std::string::npos) << listed.out;

    // Back: the proxy starts again by itself, in front of it.
    ASSERT_EQ(cli("load " + std::to_string(upstream) + " tiny").exit_code, 0);
    p = wait_for_state(proxy, "ready");
    ASSERT_EQ(p["state"], "ready") << p.dump();
    EXPECT_EQ(p["restarts"], 0) << "waiting is not failing: " << p.dump();
    EXPECT_EQ(ask(proxy).status, 200);

    // Swapped away to another model: waits again; unloaded itself, it stays unloaded.
    ASSERT_EQ(cli("swap " + std::to_string(upstream) + " tiny-two").exit_code, 0);
    EXPECT_EQ(wait_for_state(proxy, "waiting")["state"], "waiting");
    ASSERT_EQ(cli("unload " + std::to_string(proxy)).exit_code, 0);
    EXPECT_TRUE(port_status(proxy).is_null());
}

// Bad input: an upstream that crash-loops must not crash-loop what runs in front of it.
TEST_F(ChainedModelTest, AProxyWhoseUpstreamCrashLoopsWaitsInsteadOfFailing) {
    supervisor_ = start_supervisor();
    const auto proxy = proxy_port();
    const auto upstream = upstream_port();
    ASSERT_EQ(cli("load --no-wait " + std::to_string(upstream) + " fake-dead").exit_code, 0);
    const auto load = cli("load " + std::to_string(proxy) + " opt-dead");
    EXPECT_EQ(load.exit_code, 1) << load.out;
    EXPECT_EQ(wait_for_state(upstream, "failed")["state"], "failed");
    const auto p = wait_for_state(proxy, "waiting");
    EXPECT_EQ(p["state"], "waiting") << p.dump();
    EXPECT_EQ(p["restarts"], 0) << p.dump();
    EXPECT_NE(p["last_failure"].get<std::string>().find("'fake-dead' on port " +
                                                        std::to_string(upstream) + " is failed"),
              std::string::npos)
        << p.dump();
    EXPECT_NE(load.out.find("its upstream 'fake-dead'"), std::string::npos) << load.out;
}

}  // namespace

namespace {

// The handles registry a LiteLLM gateway routes by, against what ensembled really serves.
TEST_F(ChainedModelTest, CheckRegistryComparesHandlesJsonlWithTheLivePorts) {
    const auto config = (dir_ / "ensemble.yaml").string();
    const auto registry = dir_ / "handles.jsonl";
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load chain").exit_code, 0);
    const auto exported = cli("export handles");
    ASSERT_EQ(exported.exit_code, 0) << exported.out;
    std::ofstream(registry) << exported.out;
    EXPECT_NE(exported.out.find(R"("upstream":"tiny")"), std::string::npos) << exported.out;

    // What export wrote, check reads back: every handle where ensembled serves it.
    auto checked = cli("check " + config + " --registry " + registry.string());
    EXPECT_EQ(checked.exit_code, 0) << checked.out;
    EXPECT_NE(checked.out.find(registry.string() + ": ok (2 handles, each routed to the port "
                                                   "ensembled assigns its model)"),
              std::string::npos)
        << checked.out;

    // The upstream port swapped to another model: the registry no longer matches.
    ASSERT_EQ(cli("swap " + std::to_string(upstream_port()) + " tiny-two").exit_code, 0);
    std::ofstream(registry, std::ios::app) << "{\"handle\": \"x\"\n";
    checked = cli("check " + config + " --registry " + registry.string());
    EXPECT_EQ(checked.exit_code, 1) << checked.out;
    const auto up = std::to_string(upstream_port());
    for (const auto& expected :
         {registry.string() + ":3: not valid JSON",
          "'tiny' goes to port " + up + " (api_base), which serves 'tiny-two', not 'tiny'",
          "missing: 'tiny-two' is served on port " + up + ", but no line routes to it",
          registry.string() + ": 3 error(s)"}) {
        EXPECT_NE(checked.out.find(expected), std::string::npos) << expected << "\n" << checked.out;
    }

    // ensembled stopped: the config alone, and said so.
    ::kill(supervisor_->pid(), SIGTERM);
    ASSERT_TRUE(wait_exit(*supervisor_, 60s));
    supervisor_.reset();
    std::ofstream(registry) << exported.out;
    checked = cli("check " + config + " --registry " + registry.string());
    EXPECT_EQ(checked.exit_code, 0) << checked.out;
    EXPECT_NE(checked.out.find("is checked against the config only"), std::string::npos)
        << checked.out;
    EXPECT_NE(checked.out.find("warning: " + registry.string() +
                               ": model 'broken' of the config has no handle here"),
              std::string::npos)
        << checked.out;
}

}  // namespace
