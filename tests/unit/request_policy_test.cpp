// What the worker decides about a request before the engine sees it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "worker/request_policy.h"

using namespace ensemble;
using nlohmann::json;

namespace {

const ModelIdentity kModel{"qwen3-8b", {"qwen3"}, "/models/Qwen3-8B-MLX"};

TEST(ApiKey, NoKeyConfiguredLetsEverythingThrough) {
    EXPECT_TRUE(check_api_key("", ""));
    EXPECT_TRUE(check_api_key("Bearer whatever", ""));
}

TEST(ApiKey, MissingWrongAndMalformedAre401) {
    for (const char* header : {"", "Bearer wrong", "Basic k3y", "Bearer k3y ", "Bearerk3y"}) {
        auto allowed = check_api_key(header, "k3y");
        ASSERT_FALSE(allowed) << header;
        const auto e = api_error(allowed.error());
        EXPECT_EQ(e.status, http::status::unauthorized);
        EXPECT_EQ(e.type, "authentication_error");
    }
    EXPECT_TRUE(check_api_key("Bearer k3y", "k3y"));
    // The scheme is case-insensitive (RFC 7235); the key is not.
    EXPECT_TRUE(check_api_key("bearer k3y", "k3y"));
    EXPECT_TRUE(check_api_key("BEARER k3y", "k3y"));
    EXPECT_FALSE(check_api_key("Bearer K3Y", "k3y"));
}

TEST(PinModel, RewritesTheHandleToTheEnginesOwnId) {
    auto r = pin_model(R"({"model":"qwen3-8b","messages":[]})", kModel);
    ASSERT_TRUE(r);
    EXPECT_EQ(json::parse(*r)["model"], "/models/Qwen3-8B-MLX");
}

// llama.cpp's engine id is the handle: a body that names it goes on as it came, not copied (a
// request body may be megabytes); one that also names it otherwise is still rewritten.
TEST(PinModel, ABodyAlreadyNamingTheEnginesIdIsPassedOnWithoutACopy) {
    const ModelIdentity llama{"tiny", {"small"}, "tiny"};
    std::string body = R"({"model":"tiny","messages":[{"role":"user","content":")" +
                       std::string(4096, 'x') + R"("}]})";
    const auto original = body;
    const auto* bytes = body.data();
    auto r = pin_model(std::move(body), llama);
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, original);
    EXPECT_EQ(r->data(), bytes) << "the same buffer, moved";

    auto aliased = pin_model(R"({"model":"tiny","model":"small"})", llama);
    ASSERT_TRUE(aliased);
    EXPECT_EQ(*aliased, R"({"model":"tiny","model":"tiny"})");
}

TEST(PinModel, AcceptsAliasesAndFillsInAMissingModel) {
    EXPECT_TRUE(pin_model(R"({"model":"qwen3"})", kModel));
    auto r = pin_model(R"({"messages":[]})", kModel);
    ASSERT_TRUE(r);
    EXPECT_EQ(json::parse(*r)["model"], "/models/Qwen3-8B-MLX");
}

TEST(PinModel, AnotherModelIs404ModelNotFound) {
    // mlx_lm.server would load whatever path this names; the worker never forwards it.
    auto r = pin_model(R"({"model":"/etc/passwd"})", kModel);
    ASSERT_FALSE(r);
    const auto e = api_error(r.error());
    EXPECT_EQ(e.status, http::status::not_found);
    EXPECT_EQ(e.code, "model_not_found");
    EXPECT_NE(e.message.find("qwen3-8b"), std::string::npos);
}

TEST(PinModel, AcceptAnyModelServesEveryNameButStillPinsIt) {
    auto any = kModel;
    any.accept_any_model = true;
    for (const char* body : {R"({"model":"gpt-4o","messages":[]})", R"({"model":"/etc/passwd"})"}) {
        auto r = pin_model(body, any);
        ASSERT_TRUE(r) << body;
        EXPECT_EQ(json::parse(*r)["model"], "/models/Qwen3-8B-MLX") << "never forwarded";
    }
    EXPECT_FALSE(pin_model(R"({"model":42})", any)) << "still a string";
    EXPECT_FALSE(pin_model(R"({"model":"x","adapters":"/tmp/a"})", any));
}

TEST(PinModel, MalformedOrNonObjectBodiesAre400) {
    for (const char* body : {"{", "not json", "[1,2]", "\"text\"", R"({"model":42})"}) {
        auto r = pin_model(body, kModel);
        ASSERT_FALSE(r) << body;
        EXPECT_EQ(api_error(r.error()).status, http::status::bad_request) << body;
    }
}

TEST(PinModel, ABodyNestedTooDeepIs400NotACrash) {
    for (const std::size_t depth : {100'000U, 1'000'000U}) {
        const auto body = R"({"model": "qwen3", "messages": [], "extra": )" +
                          std::string(depth, '[') + std::string(depth, ']') + "}";
        auto r = pin_model(body, kModel);
        ASSERT_FALSE(r) << depth;
        const auto error = api_error(r.error());
        EXPECT_EQ(error.status, http::status::bad_request);
        EXPECT_EQ(error.code, "invalid_json");
        EXPECT_NE(error.message.find("more than 128 levels deep"), std::string::npos)
            << error.message;
    }
    // A realistic deep tool schema still passes.
    std::string schema = "{\"type\":\"string\"}";
    for (int i = 0; i < 30; ++i)
        schema = R"({"type":"object","properties":{"x":)" + schema + "}}";
    const auto body = R"({"model":"qwen3","messages":[],"tools":[{"type":"function",)"
                      R"("function":{"name":"f","parameters":)" +
                      schema + "}}]}";
    EXPECT_TRUE(pin_model(body, kModel));
}

TEST(ApiErrorFormat, IsOpenAIShaped) {
    ApiError e{http::status::service_unavailable, "server_error", "model_loading", "loading", 2};
    auto j = json::parse(e.body());
    EXPECT_EQ(j["error"]["type"], "server_error");
    EXPECT_EQ(j["error"]["code"], "model_loading");
    EXPECT_TRUE(j["error"]["param"].is_null());
    auto res = make_error_response(e, true);
    EXPECT_EQ(res[http::field::retry_after], "2");
    EXPECT_EQ(e.sse_event().rfind("data: {", 0), 0U);
    EXPECT_EQ(e.sse_event().substr(e.sse_event().size() - 2), "\n\n");
}

TEST(ModelsList, ListsHandleThenAliases) {
    auto j = json::parse(models_list_body(kModel, 1700000000));
    EXPECT_EQ(j["object"], "list");
    ASSERT_EQ(j["data"].size(), 2U);
    EXPECT_EQ(j["data"][0]["id"], "qwen3-8b");
    EXPECT_EQ(j["data"][1]["id"], "qwen3");
}

}  // namespace
