// The front door (supervisor.front_door) with real llama-server models: one URL for the fleet,
// driven by the official openai and ollama npm clients; a model loaded on demand on the pool's
// ports, one load for many requests, unloaded when idle; refusals with their reasons; and the
// front door serving on through a crash of ensembled.
#include <atomic>
#include <fstream>
#include <future>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/api_clients.h"
#include "tests/support/promtool.h"
#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

HttpRequest request(const std::string& method, const std::string& target,
                    const std::string& body = "") {
    HttpRequest r;
    r.method = method;
    r.target = target;
    r.body = body;
    if (!body.empty()) r.headers["Content-Type"] = "application/json";
    return r;
}

class FrontDoorTest : public SupervisorFixture {
  protected:
    FrontDoorTest() {
        const auto ports = free_ports(3);
        door_ = ports[0];
        pool_ = {ports[1], ports[2]};
    }
    std::string extra_supervisor_settings() const override {
        return "  memory_budget: 90%\n"
               "  front_door:\n    listen: 127.0.0.1:" +
               std::to_string(door_) + "\n    ports: [" + std::to_string(pool_[0]) + ", " +
               std::to_string(pool_[1]) + "]\n    evict_idle_after: " + idle_after_ +
               "\n    load_timeout: " + load_timeout_ + "\n    queue_max: 8\n";
    }
    std::string extra_models() const override {
        return "  tiny-cold: {engine: llama, path: " + tiny_model().string() +
               ", context: 1024, parallel: 1, on_demand: true}\n"
               "  tiny-huge: {engine: llama, path: " +
               tiny_model().string() +
               ", memory: 4000GiB, on_demand: true}\n"
               // Takes 2 s to load: time for clients to give up, or to pile up, meanwhile.
               "  slow-cold: {engine: fake, path: none, memory: 100MiB, on_demand: true,"
               " args: [--slow-start, \"2\"]}\n";
    }

    std::string base() const { return "http://127.0.0.1:" + std::to_string(door_); }

    HttpResponse ask(const std::string& model, int max_tokens = 4) {
        return http_request(door_, chat_request(R"({"model":")" + model +
                                                R"(","messages":[{"role":"user","content":"hi"}],)"
                                                R"("max_tokens":)" +
                                                std::to_string(max_tokens) + "}"));
    }

    // What the front door's /health says of its link to ensembled.
    std::string supervisor_state() {
        const auto health = http_request(door_, request("GET", "/health"));
        if (health.status != 200) return "";
        return json::parse(health.body, nullptr, false).value("supervisor", "");
    }
    // The front door answers once ensembled has started it and sent it the routes (until then
    // it answers 503 front_door_starting).
    bool wait_front_door() {
        for (int i = 0; i < 300; ++i) {
            if (supervisor_state() == "connected" &&
                http_request(door_, request("GET", "/v1/models")).status == 200)
                return true;
            std::this_thread::sleep_for(50ms);
        }
        return false;
    }

    // Where /v1/models says `model` is served (0: nowhere).
    int port_of(const std::string& model) {
        const auto models =
            json::parse(http_request(door_, request("GET", "/v1/models")).body, nullptr, false);
        for (const auto& m : models.value("data", json::array())) {
            if (m["id"] == model) return m.value("port", 0);
        }
        return 0;
    }

    int events_of(const std::string& kind) {
        const auto r = cli("--json events --lines 1000");
        const auto j = json::parse(r.out, nullptr, false);
        int n = 0;
        if (j.is_discarded()) return -1;
        for (const auto& e : j["result"]["events"])
            n += e.value("kind", "") == kind;
        return n;
    }

    unsigned short door_ = 0;
    std::array<unsigned short, 2> pool_{};
    std::string idle_after_ = "10m";
    std::string load_timeout_ = "60s";
};

TEST_F(FrontDoorTest, OpenAiAndOllamaClientsUseOneUrlAndAColdModelLoadsOnDemand) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load single").exit_code, 0);  // tiny-two, warm
    ASSERT_TRUE(wait_front_door()) << base();
    const auto run = run_client("front_door_client.mjs", {base(), "tiny-two", "tiny-cold"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto& r = run.result;
    SCOPED_TRACE(r.dump(1));
    // Every model of the config, with its state.
    std::map<std::string, json> before;
    for (const auto& m : r["models_before"])
        before[m["id"]] = m;
    EXPECT_EQ(before.size(), 12U) << "every model of the config (the fixture's 9, and 3 here)";
    EXPECT_EQ(before["tiny-two"]["state"], "loaded");
    EXPECT_EQ(before["tiny-two"]["port"], port_a_);
    EXPECT_EQ(before["tiny-cold"]["state"], "not loaded");
    EXPECT_EQ(before["tiny-cold"]["on_demand"], true);
    EXPECT_EQ(before["tiny"]["on_demand"], false);
    EXPECT_EQ(r["tags"]["models"].size(), 12U);
    EXPECT_EQ(r["ps_before"]["models"].size(), 1U);
    EXPECT_EQ(r["ps_before"]["models"][0]["name"], "tiny-two");

    EXPECT_EQ(r["warm_chat"]["model"], "tiny-two");
    EXPECT_EQ(r["warm_chat"]["choices"][0]["finish_reason"], "length");
    EXPECT_GE(r["warm_stream"]["chunks"].get<int>(), 3) << "streamed, not buffered";
    // The cold model: loaded on a pool port while the request waited, then streamed.
    EXPECT_GE(r["cold_stream"]["chunks"].get<int>(), 3);
    EXPECT_FALSE(r["cold_stream"]["text"].get<std::string>().empty());
    std::map<std::string, json> after;
    for (const auto& m : r["models_after"])
        after[m["id"]] = m;
    EXPECT_EQ(after["tiny-cold"]["state"], "loaded");
    const int cold_port = after["tiny-cold"].value("port", 0);
    EXPECT_TRUE(cold_port == pool_[0] || cold_port == pool_[1]) << cold_port;

    EXPECT_EQ(r["ollama_chat_stream"]["last"]["done"], true);
    EXPECT_GE(r["ollama_chat_stream"]["parts"].get<int>(), 3);
    EXPECT_EQ(r["ollama_chat_stream"]["last"]["eval_count"], 8);
    EXPECT_EQ(r["ollama_generate"]["eval_count"], 4);
    EXPECT_EQ(r["ollama_show"]["capabilities"], json({"completion", "tools"}));
    EXPECT_EQ(r["ps_after"]["models"].size(), 2U);
    // An on-demand load is unloaded when idle: ps says when.
    for (const auto& m : r["ps_after"]["models"]) {
        if (m["name"] == "tiny-cold") {
            EXPECT_NE(m["expires_at"], "2318-01-01T00:00:00Z") << m.dump();
        }
    }

    // keep_alive 0 unloads it once answered (an empty generate: Ollama's "unload"); asked
    // again while it is not loaded, nothing loads.
    EXPECT_EQ(r["unload"]["done_reason"], "unload");
    EXPECT_EQ(r["after_unload"]["unloaded"], true);
    EXPECT_EQ(r["unload_again"]["done_reason"], "unload");
    EXPECT_EQ(r["models_after_unload"]["state"], "not loaded");
    // Loaded again by the next request, which keeps it 5 minutes, then for ever (-1).
    const double expires_in = r["keep_5m"].value("expires_in_s", 0.0);
    EXPECT_GT(expires_in, 240);
    EXPECT_LE(expires_in, 301);
    EXPECT_EQ(r["keep_forever"], "2318-01-01T00:00:00Z");
    EXPECT_EQ(r["bad_keep_alive"]["status"], 400);
    EXPECT_NE(r["bad_keep_alive"]["error"].get<std::string>().find("keep_alive"),
              std::string::npos);

    // Errors as each client raises them, with the models to choose from.
    EXPECT_EQ(r["unknown_model"]["status"], 404);
    EXPECT_NE(r["unknown_model"]["error"].get<std::string>().find("tiny-cold"), std::string::npos);
    EXPECT_EQ(r["ollama_unknown_model"]["status"], 404);
    EXPECT_EQ(r["pull"]["status"], 501);
    // A model the budget cannot hold: refused with the budget's arithmetic, in each API's shape.
    EXPECT_EQ(r["over_budget"]["status"], 503);
    EXPECT_EQ(r["over_budget"]["code"], "over_budget");
    EXPECT_NE(r["over_budget"]["error"].get<std::string>().find("budget"), std::string::npos);
    EXPECT_EQ(r["ollama_over_budget"]["status"], 503);
    EXPECT_NE(r["ollama_over_budget"]["error"].get<std::string>().find("budget"),
              std::string::npos);
    EXPECT_EQ(events_of("budget_refused"), 2);
    EXPECT_EQ(events_of("on_demand"), 4)
        << "tiny-cold loaded, unloaded by keep_alive 0, loaded again; tiny-huge tried twice";
    EXPECT_EQ(events_of("idle_unload"), 1);
}

TEST_F(FrontDoorTest, ConcurrentRequestsForAColdModelCauseOneLoadAndAllAreAnswered) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    std::vector<std::future<HttpResponse>> requests;
    for (int i = 0; i < 4; ++i)
        requests.push_back(std::async(std::launch::async, [&] { return ask("tiny-cold"); }));
    for (auto& request : requests) {
        const auto answer = request.get();
        EXPECT_EQ(answer.status, 200) << answer.body;
    }
    EXPECT_EQ(events_of("on_demand"), 1) << "one load for every request waiting on it";
    // Loaded once, on the pool: the next request is forwarded at once.
    EXPECT_EQ(ask("tiny-cold").status, 200);
    EXPECT_EQ(events_of("on_demand"), 1);
}

// An operator's Prometheus scrapes the front door as it does a model port: what it answered
// (forwarded, or refused here), what waits for a load, the models by state, its link.
TEST_F(FrontDoorTest, ItsMetricsCountWhatItAnsweredAndTheModelsAndPassPromtool) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load single").exit_code, 0);  // tiny-two, warm
    ASSERT_TRUE(wait_front_door());
    ASSERT_EQ(ask("tiny-two").status, 200);
    ASSERT_EQ(ask("tiny-two").status, 200);
    ASSERT_EQ(ask("no-such-model").status, 404);
    const auto page = http_request(door_, request("GET", "/metrics"));
    ASSERT_EQ(page.status, 200) << page.body;
    EXPECT_EQ(page.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const auto& text = page.body;
    const std::string chats =
        R"(ensemble_front_door_requests_total{route="/v1/chat/completions",code=")";
    EXPECT_EQ(metric(text, chats + "200\"}"), 2) << text;
    EXPECT_EQ(metric(text, chats + "404\"}"), 1) << text;
    // Forwarded requests are timed; a refusal made here is not a model's answer.
    EXPECT_EQ(metric(text, "ensemble_front_door_request_duration_seconds_count"), 2) << text;
    EXPECT_EQ(metric(text, "ensemble_front_door_requests_in_flight"), 1);  // this scrape
    EXPECT_EQ(metric(text, R"(ensemble_front_door_models{state="loaded"})"), 1) << text;
    EXPECT_EQ(metric(text, R"(ensemble_front_door_models{state="not loaded"})"), 11) << text;
    EXPECT_EQ(metric(text, "ensemble_front_door_waiting_for_load"), 0) << text;
    EXPECT_EQ(metric(text, "ensemble_front_door_supervisor_connected"), 1) << text;
    EXPECT_GT(metric(text, "ensemble_front_door_memory_bytes"), 1 << 20) << text;
    const auto verdict = promtool_check_metrics(text);
    EXPECT_TRUE(verdict.ok) << verdict.output << "\n" << text;
    // A request for a model that takes 2 s to load waits, and is counted while it does.
    auto cold = std::async(std::launch::async, [&] { return ask("slow-cold"); });
    double waiting = 0;
    for (int i = 0; i < 150 && waiting < 1; ++i) {
        waiting = metric(http_request(door_, request("GET", "/metrics")).body,
                         "ensemble_front_door_waiting_for_load");
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(waiting, 1);
    EXPECT_EQ(cold.get().status, 200);
    EXPECT_EQ(metric(http_request(door_, request("GET", "/metrics")).body,
                     "ensemble_front_door_waiting_for_load"),
              0);
    // HEAD gives the headers alone; other methods are refused.
    EXPECT_EQ(http_request(door_, request("HEAD", "/metrics")).status, 200);
    EXPECT_EQ(http_request(door_, request("POST", "/metrics", "{}")).status, 405);
}

TEST_F(FrontDoorTest, RefusalsSayWhyAndNameTheModels) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    // Over the budget: refused by admission, with its reason; nothing loaded.
    const auto huge = ask("tiny-huge");
    EXPECT_EQ(huge.status, 503) << huge.body;
    EXPECT_NE(huge.body.find("budget"), std::string::npos) << huge.body;
    // Not on demand, and not loaded.
    const auto idle = ask("tiny");
    EXPECT_EQ(idle.status, 503) << idle.body;
    EXPECT_NE(idle.body.find("on_demand"), std::string::npos) << idle.body;
    // No model, an unknown one: the models to choose from.
    const auto none = http_request(
        door_, chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4})"));
    EXPECT_EQ(none.status, 400) << none.body;
    EXPECT_NE(none.body.find("tiny-cold"), std::string::npos) << none.body;
    const auto ollama = http_request(door_, request("POST", "/api/chat", R"({"model":"nope"})"));
    EXPECT_EQ(ollama.status, 404) << ollama.body;
    EXPECT_EQ(json::parse(ollama.body, nullptr, false).value("error", "").find("tiny-cold") !=
                  std::string::npos,
              true)
        << "Ollama's shape: {\"error\": ...}: " << ollama.body;
    EXPECT_EQ(events_of("budget_refused"), 1);
    // Ollama's clients ask to be shown every model they list: answered without loading it.
    const auto shown =
        http_request(door_, request("POST", "/api/show", R"({"model":"tiny-huge:latest"})"));
    EXPECT_EQ(shown.status, 200) << shown.body;
    EXPECT_EQ(json::parse(shown.body, nullptr, false)["capabilities"],
              json({"completion", "tools"}));
    // ":latest" is Ollama's: an OpenAI request naming it would be refused by the model port
    // after a load, so it is refused before one.
    const auto tagged = ask("tiny-cold:latest");
    EXPECT_EQ(tagged.status, 404) << tagged.body;
    const auto one = http_request(door_, request("GET", "/v1/models/tiny-cold"));
    EXPECT_EQ(one.status, 200) << one.body;
    EXPECT_EQ(json::parse(one.body, nullptr, false).value("state", ""), "not loaded");
    EXPECT_TRUE(status()["ports"].empty()) << "nothing loaded, nothing assigned";
}

// A web page may call the front door: it answers a browser's preflight itself (no one engine
// is there to ask), its own answers say any origin may read them, and a model's answers carry
// its engine's policy (llama-server: the page's origin).
TEST_F(FrontDoorTest, AWebPageMayCallItAsItMayCallLlamaServer) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    auto preflight = request("OPTIONS", "/v1/chat/completions");
    preflight.headers["Origin"] = "http://app.example";
    preflight.headers["Access-Control-Request-Method"] = "POST";
    preflight.headers["Access-Control-Request-Headers"] = "authorization, content-type";
    const auto allowed = http_request(door_, preflight);
    EXPECT_EQ(allowed.status, 204) << allowed.body;
    EXPECT_EQ(allowed.header("access-control-allow-origin"), "*");
    EXPECT_NE(allowed.header("access-control-allow-methods").find("POST"), std::string::npos);
    EXPECT_EQ(allowed.header("access-control-allow-headers"), "authorization, content-type");
    const auto not_a_preflight = http_request(door_, request("OPTIONS", "/v1/chat/completions"));
    EXPECT_EQ(not_a_preflight.status, 405) << not_a_preflight.body;

    auto models = request("GET", "/v1/models");
    models.headers["Origin"] = "http://app.example";
    EXPECT_EQ(http_request(door_, models).header("access-control-allow-origin"), "*");
    auto chat = chat_request(
        R"({"model":"tiny-cold","messages":[{"role":"user","content":"hi"}],"max_tokens":4})");
    chat.headers["Origin"] = "http://app.example";
    const auto answered = http_request(door_, chat);
    EXPECT_EQ(answered.status, 200) << answered.body;
    EXPECT_EQ(answered.header("access-control-allow-origin"), "http://app.example")
        << "llama-server's, through the model port";
}

TEST_F(FrontDoorTest, AClientGivingUpDoesNotCancelALoadOthersWaitForAndTheQueueIsBounded) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    auto impatient = chat_request(R"({"model":"slow-cold","messages":[{"role":"user",)"
                                  R"("content":"hi"}],"max_tokens":4})");
    impatient.timeout = 300ms;
    EXPECT_EQ(http_request(door_, impatient).status, 0) << "it gave up while the model loads";
    std::this_thread::sleep_for(400ms);  // its place in the queue is given up within 250 ms
    // Twelve more at once: eight wait (queue_max), four are refused at once, saying why.
    std::vector<std::future<HttpResponse>> requests;
    for (int i = 0; i < 12; ++i)
        requests.push_back(std::async(std::launch::async, [&] { return ask("slow-cold"); }));
    int answered = 0, refused = 0;
    for (auto& request : requests) {
        const auto answer = request.get();
        if (answer.status == 200) ++answered;
        if (answer.status != 200 && answer.status != 503)
            ADD_FAILURE() << answer.status << " " << answer.error << " " << answer.body;
        if (answer.status == 503) {
            ++refused;
            EXPECT_NE(answer.body.find("queue_full"), std::string::npos) << answer.body;
            if (answer.body.find("queue_full") == std::string::npos) continue;
            EXPECT_FALSE(answer.header("retry-after").empty());
        }
    }
    EXPECT_EQ(answered + refused, 12);
    EXPECT_GE(answered, 8);
    EXPECT_EQ(events_of("on_demand"), 1) << "one load, not cancelled by the client that left";
    EXPECT_EQ(supervisor_state(), "connected") << "the front door runs on";
}

class FrontDoorIdleTest : public FrontDoorTest {
  protected:
    FrontDoorIdleTest() { idle_after_ = "2s"; }
};

TEST_F(FrontDoorIdleTest, AnIdleOnDemandLoadIsUnloadedAndLoadsAgainWhenAsked) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    ASSERT_EQ(ask("tiny-cold").status, 200);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (events_of("idle_unload") == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(200ms);
    EXPECT_EQ(events_of("idle_unload"), 1);
    const auto models = json::parse(http_request(door_, request("GET", "/v1/models")).body);
    for (const auto& m : models["data"]) {
        if (m["id"] == "tiny-cold") {
            EXPECT_EQ(m["state"], "not loaded") << m.dump();
        }
    }
    EXPECT_EQ(ask("tiny-cold").status, 200) << "loaded again on demand";
    EXPECT_EQ(events_of("on_demand"), 2);
}

// load_timeout counts time without progress: a long load that moves is waited for, one that
// stands still is given up on, with where it stands.
class FrontDoorLoadTest : public FrontDoorTest {
  protected:
    FrontDoorLoadTest() { load_timeout_ = "2s"; }
    void SetUp() override {
        FrontDoorTest::SetUp();
        std::ofstream out(dir_ / "weights.bin", std::ios::binary);
        const std::string block(1 << 20, 'w');
        for (int i = 0; i < 32; ++i)
            out.write(block.data(), static_cast<std::streamsize>(block.size()));
    }
    std::string extra_models() const override {
        const auto weights = (dir_ / "weights.bin").string();
        return FrontDoorTest::extra_models() +
               // 5 s of steady reading (the load's progress), longer than load_timeout.
               "  slow-mapped: {engine: fake, path: " + weights +
               ", memory: 48MiB, on_demand: true, args: [--map-file, " + weights +
               ", --map-seconds, \"5\"]}\n"
               // Starts, and shows nothing for 30 s.
               "  stuck: {engine: fake, path: none, memory: 100MiB, on_demand: true,"
               " args: [--slow-start, \"30\"]}\n";
    }
};

TEST_F(FrontDoorLoadTest, ALoadThatMovesIsWaitedForAndOneThatStandsStillIsGivenUpOn) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    auto slow = std::async(std::launch::async, [&] { return ask("slow-mapped"); });
    std::vector<double> seen;  // /v1/models shows the load's progress meanwhile
    while (slow.wait_for(200ms) != std::future_status::ready) {
        const auto models =
            json::parse(http_request(door_, request("GET", "/v1/models")).body, nullptr, false);
        for (const auto& m : models.value("data", json::array())) {
            if (m["id"] == "slow-mapped" && m.contains("load_progress"))
                seen.push_back(m["load_progress"].get<double>());
        }
    }
    const auto answered = slow.get();
    EXPECT_EQ(answered.status, 200) << "waited for while it moved: " << answered.body;
    ASSERT_GE(seen.size(), 3U) << "a 5 s load, looked at every 200 ms";
    // The file's mapping, once it shows, is its own scale: memory in use, measured before it,
    // may already read 99 % of a small estimate (it does under ASan). The last rise rises.
    auto rise = seen.size() - 1;
    while (rise > 0 && seen[rise - 1] <= seen[rise])
        --rise;
    EXPECT_GT(seen.back(), seen[rise]) << "seen: " << json(seen).dump();

    const auto stuck = ask("stuck");
    EXPECT_EQ(stuck.status, 503) << stuck.body;
    EXPECT_NE(stuck.body.find("load_timeout"), std::string::npos) << stuck.body;
    EXPECT_NE(stuck.body.find("made no load progress for 2 s"), std::string::npos) << stuck.body;
    EXPECT_NE(stuck.body.find(" on port "), std::string::npos) << "where it stands: " << stuck.body;
}

// The operator swaps a pool port while a request streams from it through the front door.
class FrontDoorSwapTest : public FrontDoorTest {
  protected:
    // A stream from `model` through the front door, once its first event has come (an invalid
    // future if none came within 2 s).
    std::future<HttpResponse> begin_stream(const std::string& model) {
        auto streaming = std::make_shared<std::atomic<bool>>(false);
        auto stream = std::async(std::launch::async, [this, model, streaming] {
            return http_request(door_,
                                chat_request(R"({"model":")" + model +
                                                 R"(","stream":true,)"
                                                 R"("messages":[{"role":"user","content":"hi"}]})",
                                             true),
                                [streaming](std::string_view) {
                                    *streaming = true;
                                    return true;
                                });
        });
        for (int i = 0; i < 100 && !*streaming; ++i)
            std::this_thread::sleep_for(20ms);
        if (!*streaming) return {};
        return stream;
    }
    std::string extra_models() const override {
        return FrontDoorTest::extra_models() +
               // 20 tokens, 100 ms apart: a stream long enough to swap the port under it.
               "  slow-talk: {engine: fake, path: none, memory: 100MiB, on_demand: true,"
               " args: [--tokens, \"20\", --token-delay-ms, \"100\"]}\n";
    }
};

// Ollama's `ollama stop` (keep_alive 0) from one client while another streams: answered at
// once; the stream runs to its end, and only then is the model unloaded.
TEST_F(FrontDoorSwapTest, AnUnloadAskedForWhileAnotherClientStreamsWaitsForTheStream) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    ASSERT_EQ(ask("slow-talk").status, 200);
    auto stream = begin_stream("slow-talk");
    ASSERT_TRUE(stream.valid()) << "no first event within 2 s";
    auto stop = request("POST", "/api/generate", R"({"model":"slow-talk","keep_alive":0})");
    const auto stopped = http_request(door_, stop);
    EXPECT_EQ(stopped.status, 200);
    EXPECT_EQ(json::parse(stopped.body)["done_reason"], "unload");
    const auto streamed = stream.get();
    EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos) << "whole: " << streamed.body;
    bool unloaded = false;
    for (int i = 0; i < 100 && !unloaded; ++i) {
        unloaded = port_of("slow-talk") == 0;
        std::this_thread::sleep_for(100ms);
    }
    EXPECT_TRUE(unloaded) << "unloaded once the stream ended";
    EXPECT_EQ(events_of("idle_unload"), 1);
}

TEST_F(FrontDoorSwapTest, ASwapUnderAStreamLetsItFinishAndTheNextRequestsAreRoutedAfresh) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    ASSERT_EQ(ask("slow-talk").status, 200);
    const int port = port_of("slow-talk");
    ASSERT_TRUE(port == pool_[0] || port == pool_[1]) << port;
    auto stream = begin_stream("slow-talk");
    ASSERT_TRUE(stream.valid()) << "no first event within 2 s";
    const auto swapped = cli("swap " + std::to_string(port) + " tiny");
    EXPECT_EQ(swapped.exit_code, 0) << swapped.out;
    // The stream ran to its end on the worker it began on.
    const auto streamed = stream.get();
    EXPECT_EQ(streamed.status, 200);
    EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos) << streamed.body;
    EXPECT_EQ(streamed.body.find("\"error\""), std::string::npos) << streamed.body;
    std::size_t events = 0;
    for (auto at = streamed.body.find("data: {"); at != std::string::npos;
         at = streamed.body.find("data: {", at + 1))
        ++events;
    EXPECT_GE(events, 20U) << "every token: " << streamed.body;
    // Then each model where it now is: tiny on the swapped port, slow-talk loaded again on
    // demand on the other pool port — never one sent to the other.
    EXPECT_EQ(port_of("tiny"), port);
    const auto tiny = ask("tiny");
    ASSERT_EQ(tiny.status, 200) << tiny.body;
    EXPECT_EQ(json::parse(tiny.body)["model"], "tiny");
    const auto again = ask("slow-talk");
    ASSERT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(json::parse(again.body)["model"], "slow-talk");
    const int moved = port_of("slow-talk");
    EXPECT_TRUE(moved != port && (moved == pool_[0] || moved == pool_[1])) << moved;
    EXPECT_EQ(events_of("on_demand"), 2);
}

// A pool of two ports and three cold models: a flood for all three at once loads two and
// refuses the third (nothing idle to make room: no thrashing); once they idle, each request
// for the one not loaded evicts the one idle longest.
class FrontDoorPoolTest : public FrontDoorTest {
  protected:
    std::string extra_supervisor_settings() const override {
        return FrontDoorTest::extra_supervisor_settings() + "  evict_idle_after: 3s\n";
    }
    std::string extra_models() const override {
        std::string models = FrontDoorTest::extra_models();
        for (const char* handle : {"cold-a", "cold-b", "cold-c"}) {
            models += "  " + std::string(handle) +
                      ": {engine: llama, path: " + tiny_model().string() +
                      ", context: 512, parallel: 1, on_demand: true}\n";
        }
        return models;
    }
};

TEST_F(FrontDoorPoolTest, AFloodForMoreColdModelsThanPortsLoadsWhatFitsAndIdleOnesMakeRoom) {
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    const auto run = run_client("front_door_pool_client.mjs",
                                {base(), "2", "5000", "cold-a", "cold-b", "cold-c"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto& r = run.result;
    SCOPED_TRACE(r.dump(1));
    // Two models loaded, every request for them answered; every one for the third refused
    // with the reason, at once: both ports serve models in use, nothing is unloaded for it.
    std::map<std::string, std::set<int>> statuses;
    for (const auto& f : r["flood"])
        statuses[f["model"]].insert(f.value("status", 0));
    int loaded = 0, refused = 0;
    for (const auto& [model, seen] : statuses) {
        loaded += seen == std::set<int>{200};
        refused += seen == std::set<int>{503};
    }
    EXPECT_EQ(loaded, 2);
    EXPECT_EQ(refused, 1);
    EXPECT_NE(r["flood"].dump().find("serve models used in the last 3 s"), std::string::npos)
        << "the reason, given";
    EXPECT_EQ(r["ps_after_flood"].size(), 2U);
    // Idle now: a chat for the model refused evicts the idlest, and is answered.
    for (const auto& [model, seen] : statuses) {
        if (seen != std::set<int>{503}) continue;
        EXPECT_EQ(r["chat_" + model], true) << model;
        const auto& ps = r["ps_after_" + model];
        EXPECT_EQ(ps.size(), 2U) << model;
        EXPECT_NE(ps.dump().find(model), std::string::npos) << model << " is loaded";
    }
    EXPECT_EQ(events_of("evict"), 1) << "this one only: none in the flood (no thrashing)";
    EXPECT_EQ(events_of("on_demand"), 3);
}

// The pids of the front doors ensembled started, from its events ("started (pid N) on ...").
std::vector<int> front_door_pids(const json& events) {
    std::vector<int> pids;
    static const std::regex started(R"(^started \(pid ([0-9]+)\))");
    for (const auto& e : events) {
        std::smatch m;
        const auto message = e.value("message", "");
        if (e.value("kind", "") == "front_door" && std::regex_search(message, m, started))
            pids.push_back(std::stoi(m[1].str()));
    }
    return pids;
}

TEST_F(FrontDoorTest, AFrontDoorThatDiesIsStartedAgainAndItsClientsWaitInsteadOfFailing) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load single").exit_code, 0);
    ASSERT_TRUE(wait_front_door());
    const auto events = [&] { return json::parse(cli("--json events --lines 1000").out); };
    const auto pids = front_door_pids(events()["result"]["events"]);
    ASSERT_EQ(pids.size(), 1U);
    ASSERT_EQ(::kill(pids.front(), SIGKILL), 0);
    // ensembled holds the listening socket: a request meanwhile waits in its backlog for the
    // next front door, which learns the routes and answers it.
    const auto meanwhile = ask("tiny-two");
    EXPECT_EQ(meanwhile.status, 200) << meanwhile.body;
    const auto after = events()["result"]["events"];
    EXPECT_EQ(front_door_pids(after).size(), 2U) << after.dump(1);
    EXPECT_NE(after.dump().find("exited (killed by signal 9"), std::string::npos) << after.dump(1);
}

TEST_F(FrontDoorTest, TheFrontDoorServesOnThroughACrashOfEnsembledAndIsKept) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load single").exit_code, 0);
    ASSERT_TRUE(wait_front_door());
    ASSERT_EQ(ask("tiny-two").status, 200);
    ::kill(supervisor_->pid(), SIGKILL);
    ASSERT_TRUE(wait_exit(*supervisor_, 10s));
    // Routed from what it last knew, with nobody to ask; a cold model is refused at once.
    EXPECT_EQ(ask("tiny-two").status, 200);
    for (int i = 0; i < 100 && supervisor_state() != "unreachable"; ++i)
        std::this_thread::sleep_for(20ms);
    const auto alone = ask("tiny-cold");
    EXPECT_EQ(alone.status, 503) << alone.body;
    EXPECT_NE(alone.body.find("ensembled"), std::string::npos) << alone.body;
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door()) << "the one still serving registered again";
    EXPECT_EQ(events_of("front_door_kept"), 1) << "kept, not replaced";
    EXPECT_EQ(ask("tiny-two").status, 200);
    const auto cold = ask("tiny-cold");
    EXPECT_EQ(cold.status, 200) << "and loads on demand for the new ensembled: " << cold.body;

    // Down again; its config now gives the front door other settings: the one still serving
    // is replaced by one with them, and no client notices.
    ::kill(supervisor_->pid(), SIGKILL);
    ASSERT_TRUE(wait_exit(*supervisor_, 10s));
    std::string config;
    {
        std::ifstream in(dir_ / "ensemble.yaml");
        config.assign(std::istreambuf_iterator<char>(in), {});
    }
    const auto at = config.find("queue_max: 8");
    ASSERT_NE(at, std::string::npos);
    config.replace(at, 12, "queue_max: 9");
    std::ofstream(dir_ / "ensemble.yaml") << config;
    supervisor_ = start_supervisor();
    ASSERT_TRUE(wait_front_door());
    EXPECT_EQ(ask("tiny-two").status, 200);
    const auto events = cli("events --lines 100").out;
    EXPECT_NE(events.find("--queue-max 8"), std::string::npos) << events;
    EXPECT_NE(events.find("it is stopped and a new one started"), std::string::npos) << events;
    EXPECT_EQ(events_of("front_door_kept"), 1) << "the first time only";
}

}  // namespace

// supervisor.port_limits reaches every public port: the model ports' workers and the front door
// refuse a body over the config's limit, and serve one under it through the real engine.
class PortLimitsTest : public FrontDoorTest {
  protected:
    std::string extra_supervisor_settings() const override {
        return FrontDoorTest::extra_supervisor_settings() +
               "  port_limits: {max_body_bytes: 4KiB}\n";
    }
    static HttpRequest chat_of(const std::string& model, std::size_t content_bytes) {
        return chat_request(R"({"model":")" + model +
                            R"(","max_tokens":2,"messages":[{"role":"user","content":")" +
                            std::string(content_bytes, 'x') + "\"}]}");
    }
};

TEST_F(PortLimitsTest, EveryPublicPortTakesTheConfigsLimits) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load single").exit_code, 0);  // tiny-two on port_a_
    ASSERT_TRUE(wait_front_door());
    for (const auto port : {port_a_, door_}) {
        SCOPED_TRACE(port == door_ ? "the front door" : "a model port");
        // Through the front door, a model served nowhere: refused by the front door's own
        // limit (404 model_not_found without it), not by the model port behind it.
        const auto refused =
            http_request(port, chat_of(port == door_ ? "served-nowhere" : "tiny-two", 5000));
        EXPECT_EQ(refused.status, 413) << refused.body;
        const auto error = json::parse(refused.body, nullptr, false);
        ASSERT_FALSE(error.is_discarded()) << refused.body;
        EXPECT_EQ(error["error"]["code"], "request_too_large");
        EXPECT_NE(error["error"]["message"].get<std::string>().find("4096 bytes"),
                  std::string::npos)
            << refused.body;
        EXPECT_EQ(http_request(port, chat_of("tiny-two", 100)).status, 200)
            << "under the limit: served";
    }
}
