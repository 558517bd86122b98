// A model port driven by the official JavaScript clients against the real llama-server on a
// generated model: OpenAI's SDK on the OpenAI API, Ollama's on Ollama's API
// (worker/ollama_api.h) — what Open WebUI, Continue and the other tools see.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/api_clients.h"
#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

using namespace ensemble::testing;
using nlohmann::json;

namespace {

TEST(OllamaApiTest, OllamasOwnClientListsChatsStreamsAndGeneratesThroughTheRealEngine) {
    WorkerProcess worker(free_port(), {"--alias", "tiny-chat"}, current_test_name());
    ASSERT_TRUE(worker.wait_ready()) << worker.log();
    const auto run = run_client("ollama_client.mjs",
                                {"http://127.0.0.1:" + std::to_string(worker.port()), "tiny"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    ASSERT_TRUE(run.result.is_object()) << run.output;
    const auto& r = run.result;
    SCOPED_TRACE(r.dump(1));
    EXPECT_FALSE(r["version"]["version"].get<std::string>().empty());
    ASSERT_EQ(r["list"]["models"].size(), 1U);
    EXPECT_EQ(r["list"]["models"][0]["name"], "tiny");
    EXPECT_EQ(r["list"]["models"][0]["details"]["format"], "gguf");
    EXPECT_GT(r["list"]["models"][0]["size"].get<long long>(), 0) << "the model file's size";
    EXPECT_EQ(r["show"]["model_info"]["general.context_length"], 1024)
        << "4096 over llama-server's 4 slots: what one request may use";
    EXPECT_EQ(r["show"]["capabilities"], json({"completion", "tools"}));
    EXPECT_GT(r["ps"]["models"][0]["size"].get<long long>(), 0) << "the memory it holds";

    // Not streamed: one answer with Ollama's counts and durations, from the engine's.
    const auto& chat = r["chat"];
    EXPECT_EQ(chat["done"], true);
    EXPECT_EQ(chat["done_reason"], "length");
    EXPECT_EQ(chat["eval_count"], 8);
    EXPECT_GT(chat["prompt_eval_count"].get<int>(), 0);
    EXPECT_GT(chat["eval_duration"].get<long long>(), 0);
    EXPECT_GE(chat["total_duration"].get<long long>(), chat["eval_duration"].get<long long>());
    EXPECT_EQ(chat["message"]["role"], "assistant");
    EXPECT_FALSE(chat["message"]["content"].get<std::string>().empty());

    // Streamed: NDJSON parts as the engine generates, then the done part with the counts.
    const auto& stream = r["chat_stream"];
    EXPECT_GE(stream["parts"].get<int>(), 3) << "token by token, not one buffered answer";
    EXPECT_FALSE(stream["text"].get<std::string>().empty());
    EXPECT_EQ(stream["last"]["done"], true);
    EXPECT_EQ(stream["last"]["eval_count"], 8);
    EXPECT_EQ(r["generate"]["model"], "tiny:latest") << "the name the client used, echoed";
    EXPECT_EQ(r["generate"]["eval_count"], 4);
    EXPECT_FALSE(r["generate"]["response"].get<std::string>().empty());
    EXPECT_EQ(r["generate_stream"]["last"]["done"], true);
    // Up to four lines of text (a token that ends inside a UTF-8 character has none), then done.
    EXPECT_GE(r["generate_stream"]["parts"].get<int>(), 2);
    EXPECT_LE(r["generate_stream"]["parts"].get<int>(), 5);
    EXPECT_EQ(r["generate_stream"]["last"]["eval_count"], 4);
    // format: json reaches the engine as response_format, which llama-server turns into a
    // grammar; the generated test model's vocabulary cannot express JSON's, and the engine's
    // refusal reaches the client as Ollama's error (without `format` the same request is 200).
    EXPECT_EQ(r["json_format"]["status"], 400);
    EXPECT_NE(r["json_format"]["error"].get<std::string>().find("samplers"), std::string::npos);

    // Errors as Ollama's client raises them: the status and the reason.
    EXPECT_EQ(r["unknown_model"]["status"], 404);
    EXPECT_NE(r["unknown_model"]["error"].get<std::string>().find("serves 'tiny'"),
              std::string::npos);
    EXPECT_EQ(r["pull"]["status"], 501);
    EXPECT_NE(r["pull"]["error"].get<std::string>().find("managed by Ensemble's config"),
              std::string::npos);
    // llama-server without --embeddings refuses: its reason reaches the client.
    EXPECT_EQ(r["embed"]["status"], 501);
    EXPECT_NE(r["embed"]["error"].get<std::string>().find("embeddings"), std::string::npos);
}

TEST(OpenAiClientTest, OpenAisOwnClientListsChatsStreamsAndSeesErrorsAsApiErrors) {
    WorkerProcess worker(free_port(), {"--alias", "tiny-chat"}, current_test_name());
    ASSERT_TRUE(worker.wait_ready()) << worker.log();
    const auto run = run_client(
        "openai_client.mjs", {"http://127.0.0.1:" + std::to_string(worker.port()) + "/v1", "tiny"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    ASSERT_TRUE(run.result.is_object()) << run.output;
    const auto& r = run.result;
    SCOPED_TRACE(r.dump(1));
    ASSERT_EQ(r["models"].size(), 2U) << "the handle and its alias";
    EXPECT_EQ(r["models"][0]["id"], "tiny");
    EXPECT_EQ(r["models"][1]["id"], "tiny-chat");
    EXPECT_EQ(r["chat"]["usage"]["completion_tokens"], 8);
    EXPECT_EQ(r["chat"]["model"], "tiny");
    EXPECT_GE(r["stream"]["chunks"].get<int>(), 3) << "token by token";
    EXPECT_EQ(r["stream"]["usage"]["completion_tokens"], 8);
    EXPECT_EQ(r["completion"]["usage"]["completion_tokens"], 4);
    EXPECT_EQ(r["unknown_model"]["status"], 404);
    EXPECT_EQ(r["unknown_model"]["code"], "model_not_found") << "raised as the SDK's APIError";
}

TEST(OllamaApiTest, EmbeddingsAndTheRootProbe) {
    WorkerProcess worker(
        free_port(), {"--engine-arg=--embeddings", "--engine-arg=--pooling", "--engine-arg=mean"},
        current_test_name());
    ASSERT_TRUE(worker.wait_ready()) << worker.log();
    HttpRequest embed;
    embed.method = "POST";
    embed.target = "/api/embed";
    embed.body = R"({"model":"tiny","input":["hello","world"]})";
    auto r = http_request(worker.port(), embed);
    ASSERT_EQ(r.status, 200) << r.body;
    const auto vectors = json::parse(r.body);
    ASSERT_EQ(vectors["embeddings"].size(), 2U) << r.body;
    EXPECT_GT(vectors["embeddings"][0].size(), 0U);
    EXPECT_GT(vectors["prompt_eval_count"].get<int>(), 0);
    embed.target = "/api/embeddings";  // the older form: one prompt, one vector
    embed.body = R"({"model":"tiny","prompt":"hello"})";
    r = http_request(worker.port(), embed);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["embedding"].size(), vectors["embeddings"][0].size());
    HttpRequest root;
    r = http_request(worker.port(), root);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "Ollama is running") << "what Ollama's clients probe";
}

TEST(OllamaApiTest, TheApiKeyAndTheMethodsAreEnforcedAsOnTheOpenAiRoutes) {
    WorkerProcess worker(free_port(), {"--api-key", "sekrit"}, current_test_name());
    ASSERT_TRUE(worker.wait_ready()) << worker.log();
    HttpRequest tags;
    tags.method = "GET";
    tags.target = "/api/tags";
    auto r = http_request(worker.port(), tags);
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_TRUE(json::parse(r.body)["error"].is_string()) << "Ollama's shape: " << r.body;
    tags.headers["Authorization"] = "Bearer sekrit";
    r = http_request(worker.port(), tags);
    EXPECT_EQ(r.status, 200) << r.body;
    HttpRequest post_tags = tags;
    post_tags.method = "POST";
    r = http_request(worker.port(), post_tags);
    EXPECT_EQ(r.status, 405) << r.body;
    HttpRequest bad = tags;
    bad.method = "POST";
    bad.target = "/api/chat";
    bad.body = R"({"model":"tiny","messages":"not an array"})";
    r = http_request(worker.port(), bad);
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(json::parse(r.body)["error"], "messages must be an array");
    bad.target = "/api/nothing";
    r = http_request(worker.port(), bad);
    EXPECT_EQ(r.status, 404) << r.body;
    // Refused before the request is whole (its headers over 64 KiB): still Ollama's shape.
    const auto refused = raw_exchange(worker.port(),
                                      "POST /api/chat HTTP/1.1\r\nHost: a\r\n"
                                      "X-Padding: " +
                                          std::string(70 * 1024, 'x') + "\r\n\r\n");
    EXPECT_TRUE(refused.starts_with("HTTP/1.1 431")) << refused.substr(0, 200);
    const auto body = refused.substr(refused.find("\r\n\r\n") + 4);
    EXPECT_TRUE(json::parse(body, nullptr, false)["error"].is_string()) << body;
}

}  // namespace
