// Ollama's API translated to OpenAI's and back (worker/ollama_api.h): the tables, one case each.
#include "worker/ollama_api.h"

#include <gtest/gtest.h>

using namespace ensemble;
using namespace ensemble::ollama;
using nlohmann::json;

namespace {

json engine_body(Call call, const json& request) {
    auto translated = to_engine(call, request.dump());
    EXPECT_TRUE(translated) << translated.error().message;
    return translated ? json::parse(translated->body) : json();
}

TEST(OllamaApi, ChatOptionsFormatAndStreamMapToOpenAiParameters) {
    const auto body =
        engine_body(Call::chat, {{"model", "coder:latest"},
                                 {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                 {"format", "json"},
                                 {"options",
                                  {{"temperature", 0.2},
                                   {"top_p", 0.9},
                                   {"top_k", 40},
                                   {"num_predict", 64},
                                   {"stop", {"###"}},
                                   {"seed", 7},
                                   {"repeat_penalty", 1.1},
                                   {"num_ctx", 8192}}}});
    EXPECT_EQ(body["model"], "coder") << "Ollama's clients add :latest";
    EXPECT_EQ(body["temperature"], 0.2);
    EXPECT_EQ(body["top_p"], 0.9);
    EXPECT_EQ(body["top_k"], 40);
    EXPECT_EQ(body["max_tokens"], 64);
    EXPECT_EQ(body["stop"], json({"###"}));
    EXPECT_EQ(body["seed"], 7);
    EXPECT_EQ(body["repeat_penalty"], 1.1);
    EXPECT_FALSE(body.contains("num_ctx")) << "the model's context is the config's";
    EXPECT_EQ(body["response_format"], json({{"type", "json_object"}}));
    EXPECT_EQ(body["stream"], true) << "Ollama streams unless told not to";
    EXPECT_EQ(body["stream_options"]["include_usage"], true) << "for the done line's counts";
    const auto translated = to_engine(
        Call::chat, R"({"model":"coder:latest","messages":[{"role":"user","content":"x"}]})");
    EXPECT_EQ(translated->model, "coder:latest") << "answers echo the name the client used";
    EXPECT_EQ(translated->target, "/v1/chat/completions");

    const json schema = {{"type", "object"}, {"properties", {{"a", {{"type", "boolean"}}}}}};
    const auto structured =
        engine_body(Call::chat, {{"model", "m"},
                                 {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                 {"format", schema},
                                 {"stream", false},
                                 {"options", {{"num_predict", -1}}}});
    EXPECT_EQ(structured["response_format"]["type"], "json_schema");
    EXPECT_EQ(structured["response_format"]["json_schema"]["schema"], schema);
    EXPECT_EQ(structured["stream"], false);
    EXPECT_FALSE(structured.contains("max_tokens")) << "-1: no limit";
}

TEST(OllamaApi, ImagesToolCallsAndToolAnswersBecomeOpenAiMessages) {
    const json tools =
        json::array({{{"type", "function"},
                      {"function", {{"name", "weather"}, {"parameters", {{"type", "object"}}}}}}});
    const auto body = engine_body(
        Call::chat,
        {{"model", "m"},
         {"tools", tools},
         {"messages",
          {{{"role", "user"}, {"content", "what is this?"}, {"images", {"iVBORw0KGgo="}}},
           {{"role", "assistant"},
            {"content", ""},
            {"tool_calls",
             {{{"function", {{"name", "weather"}, {"arguments", {{"city", "Oslo"}}}}}},
              {{"function", {{"name", "time"}, {"arguments", json::object()}}}}}}},
           {{"role", "tool"}, {"tool_name", "time"}, {"content", "12:00"}},
           {{"role", "tool"}, {"tool_name", "weather"}, {"content", "rain"}}}}});
    EXPECT_EQ(body["tools"], tools);
    const auto& user = body["messages"][0]["content"];
    ASSERT_TRUE(user.is_array());
    EXPECT_EQ(user[0], json({{"type", "text"}, {"text", "what is this?"}}));
    EXPECT_EQ(user[1]["image_url"]["url"], "data:image/png;base64,iVBORw0KGgo=");
    const auto& calls = body["messages"][1]["tool_calls"];
    EXPECT_EQ(calls[0]["id"], "call_0");
    EXPECT_EQ(calls[0]["function"]["arguments"], R"({"city":"Oslo"})") << "OpenAI's: JSON text";
    EXPECT_EQ(body["messages"][2]["tool_call_id"], "call_1") << "the call of its name";
    EXPECT_EQ(body["messages"][3]["tool_call_id"], "call_0");
}

TEST(OllamaApi, GenerateEmbedAndRequestsWithNothingToGenerate) {
    const auto chat =
        engine_body(Call::generate, {{"model", "m"}, {"prompt", "hi"}, {"system", "be brief"}});
    EXPECT_EQ(chat["messages"][0], json({{"role", "system"}, {"content", "be brief"}}));
    EXPECT_EQ(chat["messages"][1], json({{"role", "user"}, {"content", "hi"}}));
    auto raw = to_engine(Call::generate, R"({"model":"m","prompt":"once","raw":true})");
    EXPECT_EQ(raw->target, "/v1/completions");
    EXPECT_EQ(json::parse(raw->body)["prompt"], "once");
    auto embed = to_engine(Call::embed, R"({"model":"m","input":["a","b"]})");
    EXPECT_EQ(embed->target, "/v1/embeddings");
    EXPECT_FALSE(embed->stream);
    EXPECT_EQ(json::parse(embed->body)["input"], json({"a", "b"}));
    // An empty chat loads the model; keep_alive 0 asks to unload it: answered here.
    auto load = to_engine(Call::chat, R"({"model":"m","messages":[]})");
    ASSERT_TRUE(load->answered);
    EXPECT_EQ(json::parse(*load->answered)["done_reason"], "load");
    auto unload = to_engine(Call::generate, R"({"model":"m","keep_alive":0})");
    EXPECT_EQ(json::parse(*unload->answered)["done_reason"], "unload");
    // Refused, with what is wrong.
    EXPECT_EQ(to_engine(Call::chat, R"({"messages":[]})").error().message, "model is required");
    EXPECT_EQ(to_engine(Call::chat, "{").error().code, "bad_request");
    EXPECT_NE(to_engine(Call::generate, R"({"model":"m","prompt":"a","suffix":"b"})")
                  .error()
                  .message.find("suffix"),
              std::string::npos);
    EXPECT_NE(to_engine(Call::chat, R"({"model":"m","messages":[{"role":"user"}],"format":3})")
                  .error()
                  .message.find("format"),
              std::string::npos);
    EXPECT_EQ(to_engine(Call::chat, std::string(200, '[') + std::string(200, ']')).error().code,
              "bad_request")
        << "nesting is bounded";
}

// keep_alive as Ollama reads it (Go's time.ParseDuration, or a number of seconds).
TEST(OllamaApi, KeepAliveIsSecondsOrAGoDurationAndNegativeIsForEver) {
    const auto seconds = [](const json& value) -> std::optional<std::int64_t> {
        auto parsed = keep_alive_seconds(value);
        EXPECT_TRUE(parsed) << value << ": " << parsed.error().message;
        return parsed ? *parsed : std::nullopt;
    };
    EXPECT_EQ(seconds(nullptr), std::nullopt) << "not given";
    EXPECT_EQ(seconds(300), 300);
    EXPECT_EQ(seconds(2.9), 2) << "a number is whole seconds";
    EXPECT_EQ(seconds(0), 0);
    EXPECT_EQ(seconds("0"), 0);
    EXPECT_EQ(seconds("0s"), 0);
    EXPECT_EQ(seconds("5m"), 300);
    EXPECT_EQ(seconds("1h30m"), 5400);
    EXPECT_EQ(seconds("1.5h"), 5400);
    EXPECT_EQ(seconds("+10s"), 10);
    EXPECT_EQ(seconds("300ms"), 1) << "a part of a second is a second";
    EXPECT_EQ(seconds("2\u00b5s"), 1);
    EXPECT_EQ(seconds(".5s"), 1);
    EXPECT_EQ(seconds(-1), -1) << "for ever";
    EXPECT_EQ(seconds(-0.5), -1) << "negative, however little";
    EXPECT_EQ(seconds("-1m"), -1);
    EXPECT_EQ(seconds("1000000h"), -1) << "beyond a century is for ever";
    for (const json& bad :
         {json("5"), json("5 m"), json("m"), json(""), json("-"), json("1d"), json("1.s.s"),
          json(std::string(65, '1') + "s"), json(true), json::array(), json::object()}) {
        const auto parsed = keep_alive_seconds(bad);
        ASSERT_FALSE(parsed) << bad;
        EXPECT_EQ(parsed.error().code, "bad_request");
        EXPECT_NE(parsed.error().message.find("keep_alive"), std::string::npos);
    }
    EXPECT_LT(keep_alive_seconds(std::string(5000, 'x')).error().message.size(), 400U)
        << "an untrusted value is not echoed whole";
    // On a model port too: refused, not ignored.
    EXPECT_EQ(
        to_engine(Call::chat, R"({"model":"m","messages":[],"keep_alive":"soon"})").error().code,
        "bad_request");
    auto unload = to_engine(Call::chat, R"({"model":"m","keep_alive":"0m"})");
    EXPECT_EQ(json::parse(*unload->answered)["done_reason"], "unload");
    // Only a chat or generate with nothing to generate loads (or unloads) and no more.
    EXPECT_TRUE(loads_only(Call::chat, json::object()));
    EXPECT_TRUE(loads_only(Call::generate, {{"prompt", ""}, {"images", json::array()}}));
    EXPECT_FALSE(loads_only(Call::generate, {{"images", {"aGk="}}}));
    EXPECT_FALSE(loads_only(Call::chat, {{"messages", true}}));
    EXPECT_FALSE(loads_only(Call::embed, json::object()));
}

// Every member of the wrong type is refused or ignored, never an exception (nlohmann's value()
// and get() throw on a member of another type; a request or an engine can send anything).
TEST(OllamaApi, MembersOfTheWrongTypeNeverThrow) {
    const std::vector<std::string> bodies = {
        R"({"model":"m","messages":[{"role":"tool","tool_name":5,"content":null,
            "tool_calls":[{"function":"x"},{"function":{"name":3,"arguments":[1]}}]}],
            "options":[1],"stream":"no","tools":[],"format":null,"keep_alive":"5m"})",
        R"({"model":"m","messages":[{"role":"user","images":"abc"}]})",
        R"({"model":"m","messages":[{"role":7}]})",
        R"({"model":5})",
        R"({"model":"m","messages":{}})",
        R"({"model":"m","messages":[1,2]})",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":{"a":1}})",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],
            "options":{"num_predict":"9","temperature":"hot","stop":5}})",
    };
    for (const auto& body : bodies) {
        EXPECT_NO_THROW((void)to_engine(Call::chat, body)) << body;
        EXPECT_NO_THROW((void)to_engine(Call::generate, body)) << body;
        EXPECT_NO_THROW((void)to_engine(Call::embed, body)) << body;
        EXPECT_NO_THROW((void)requested_name(body)) << body;
    }
    EXPECT_EQ(to_engine(Call::chat, bodies[1]).error().message,
              "a message's images must be an array of base64 strings");
    EXPECT_EQ(to_engine(Call::chat, bodies[6]).error().message, "tools must be an array");
    EXPECT_EQ(requested_name(R"({"name":"old"})"), "old");
    const std::vector<std::string> events = {
        "data: {\"choices\":[{\"delta\":\"x\",\"finish_reason\":5}]}\n\n",
        "data: {\"choices\":[1],\"usage\":[],\"timings\":{\"prompt_ms\":\"a\"}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":\"0\",\"function\":1},"
        "5]}}]}\n\n",
        "data: {\"choices\":{}}\n\ndata: [1]\n\ndata: \"\\ud800\"\n\n",
        "data: {\"error\":[1,2]}\n\n",
    };
    for (const auto& event : events) {
        Answer answer(Call::chat, "m", true, Answer::Clock::now());
        http::response_header<> header;
        header.result(http::status::ok);
        answer.begin(header, true);
        EXPECT_NO_THROW((void)answer.feed(event)) << event;
        EXPECT_NO_THROW((void)answer.finish()) << event;
    }
    for (const std::string whole : {R"({"choices":[{"message":"x"}],"usage":7})", R"([1])",
                                    R"({"data":[1,{"embedding":"x"}]})", "\xff"}) {
        for (const auto call : {Call::chat, Call::embed, Call::embeddings}) {
            Answer answer(call, "m", false, Answer::Clock::now());
            http::response_header<> header;
            header.result(http::status::ok);
            answer.begin(header, false);
            (void)answer.feed(whole);
            EXPECT_NO_THROW((void)answer.finish()) << whole;
        }
    }
    // Bytes that are not UTF-8 in what is echoed become U+FFFD, not an exception.
    EXPECT_NO_THROW((void)error_response(http::status::not_found, "no route for '\xff'", true));
}

TEST(OllamaApi, CallsAndMethods) {
    EXPECT_EQ(call_of("/api/chat"), Call::chat);
    EXPECT_EQ(call_of("/api/tags"), Call::tags);
    EXPECT_EQ(call_of("/api/blobs/sha256:abc"), Call::managed);
    EXPECT_EQ(call_of("/api/pull"), Call::managed);
    EXPECT_EQ(call_of("/api/chat/x"), Call::unknown);
    EXPECT_EQ(method_of(Call::tags), "GET");
    EXPECT_EQ(method_of(Call::show), "POST");
}

http::response_header<> ok_header(bool stream) {
    http::response_header<> header;
    header.result(http::status::ok);
    header.set(http::field::content_type, stream ? "text/event-stream" : "application/json");
    header.set(http::field::content_length, "10");
    return header;
}

std::vector<json> lines_of(const std::string& ndjson) {
    std::vector<json> out;
    std::size_t at = 0;
    while (at < ndjson.size()) {
        const auto end = ndjson.find('\n', at);
        EXPECT_NE(end, std::string::npos) << "every line ends in \\n";
        if (end == std::string::npos) break;
        out.push_back(json::parse(ndjson.substr(at, end - at)));
        at = end + 1;
    }
    return out;
}

TEST(OllamaApi, AStreamBecomesNdjsonLinesAsItArrivesEndingWithTheCounts) {
    Answer answer(Call::chat, "tiny:latest", true, Answer::Clock::now());
    auto header = ok_header(true);
    answer.begin(header, true);
    EXPECT_EQ(header[http::field::content_type], "application/x-ndjson");
    EXPECT_EQ(header.count(http::field::content_length), 0U);
    const std::string events =
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":"
        "\"weather\",\"arguments\":\"{\\\"ci\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{"
        "\"arguments\":\"ty\\\":\\\"Oslo\\\"}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}],"
        "\"timings\":{\"prompt_ms\":2.5,\"predicted_ms\":10}}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}\n\n"
        "data: [DONE]\n\n";
    // In pieces of 7 bytes: events split anywhere still come out whole.
    std::string out;
    for (std::size_t at = 0; at < events.size(); at += 7)
        out += answer.feed(std::string_view(events).substr(at, 7));
    out += answer.finish();
    const auto lines = lines_of(out);
    ASSERT_EQ(lines.size(), 4U) << out;
    EXPECT_EQ(lines[0]["message"]["content"], "Hel");
    EXPECT_EQ(lines[0]["model"], "tiny:latest");
    EXPECT_EQ(lines[0]["done"], false);
    EXPECT_EQ(lines[1]["message"]["content"], "lo");
    EXPECT_EQ(lines[2]["message"]["tool_calls"][0]["function"]["name"], "weather");
    EXPECT_EQ(lines[2]["message"]["tool_calls"][0]["function"]["arguments"],
              json({{"city", "Oslo"}}))
        << "Ollama's: an object";
    const auto& done = lines[3];
    EXPECT_EQ(done["done"], true);
    EXPECT_EQ(done["done_reason"], "stop");
    EXPECT_EQ(done["prompt_eval_count"], 12);
    EXPECT_EQ(done["eval_count"], 5);
    EXPECT_EQ(done["prompt_eval_duration"], 2500000);
    EXPECT_EQ(done["eval_duration"], 10000000);
    EXPECT_GE(done["total_duration"].get<long long>(), 0);
    EXPECT_EQ(answer.finish(), "") << "said once";
}

TEST(OllamaApi, WholeAnswersErrorsAndCutStreams) {
    Answer whole(Call::generate, "m", false, Answer::Clock::now());
    auto header = ok_header(false);
    whole.begin(header, false);
    EXPECT_EQ(whole.feed(R"({"choices":[{"message":{"content":"hi"},"finish_reason":"length"}],)"),
              "");
    EXPECT_EQ(whole.feed(R"("usage":{"prompt_tokens":3,"completion_tokens":1}})"), "");
    const auto out = json::parse(whole.finish());
    EXPECT_EQ(out["response"], "hi");
    EXPECT_EQ(out["done_reason"], "length");
    EXPECT_EQ(out["eval_count"], 1);

    Answer refused(Call::chat, "m", true, Answer::Clock::now());
    http::response_header<> bad;
    bad.result(http::status::bad_request);
    refused.begin(bad, false);
    EXPECT_EQ(bad[http::field::content_type], "application/json; charset=utf-8");
    (void)refused.feed(R"({"error":{"code":400,"message":"context too long"}})");
    EXPECT_EQ(json::parse(refused.finish()), json({{"error", "context too long"}}));

    Answer mid(Call::chat, "m", true, Answer::Clock::now());
    auto stream = ok_header(true);
    mid.begin(stream, true);
    (void)mid.feed("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
    const auto cut =
        mid.cut({http::status::bad_gateway, "server_error", "engine_failed", "the engine stopped"});
    EXPECT_EQ(lines_of(cut).at(0), json({{"error", "the engine stopped"}}));
    const auto error_event =
        mid.feed("data: {\"error\":{\"message\":\"late\"}}\n\n");  // after the end: nothing
    EXPECT_EQ(error_event, "");

    Answer engine_error(Call::chat, "m", true, Answer::Clock::now());
    auto events = ok_header(true);
    engine_error.begin(events, true);
    EXPECT_EQ(lines_of(engine_error.feed("data: {\"error\":{\"message\":\"oom\"}}\n\n")).at(0),
              json({{"error", "oom"}}));
}

// Found adversarially: llama-server reports a failure mid-stream as an `error:` field, which
// was passed over and the answer ended `done` as if it had succeeded.
TEST(OllamaApi, AnEngineErrorMidStreamEndsTheAnswerWithIt) {
    for (const std::string& failure :
         {std::string("error: {\"code\":500,\"message\":\"slot lost\"}\n\n"),
          std::string("event: error\ndata: {\"message\":\"slot lost\"}\n\n")}) {
        Answer answer(Call::chat, "m", true, Answer::Clock::now());
        http::response_header<> header;
        header.result(http::status::ok);
        answer.begin(header, true);
        auto out =
            answer.feed("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n" + failure);
        out += answer.finish();
        const auto lines = lines_of(out);
        ASSERT_EQ(lines.size(), 2U) << out;
        EXPECT_EQ(lines[0]["message"]["content"], "Hel");
        EXPECT_EQ(lines[1], json({{"error", "slot lost"}})) << "not done: true";
    }
}

// Found adversarially: an answer asked again of the engine (it died before answering) kept the
// first attempt's bytes; reasoning was dropped.
TEST(OllamaApi, AnAnswerBegunAgainStartsFreshAndReasoningIsThinking) {
    Answer answer(Call::chat, "m", false, Answer::Clock::now());
    http::response_header<> header;
    header.result(http::status::ok);
    answer.begin(header, false);
    (void)answer.feed(R"({"choices":[{"message":{"content":"half)");
    answer.begin(header, false);  // the engine died; asked again
    (void)answer.feed(
        R"({"choices":[{"message":{"content":"42","reasoning_content":"6 times 7"}}]})");
    const auto whole = json::parse(answer.finish());
    EXPECT_EQ(whole["message"]["content"], "42");
    EXPECT_EQ(whole["message"]["thinking"], "6 times 7");

    Answer stream(Call::generate, "m", true, Answer::Clock::now());
    auto events = header;
    stream.begin(events, true);
    const auto lines = lines_of(
        stream.feed("data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n"));
    ASSERT_EQ(lines.size(), 1U);
    EXPECT_EQ(lines[0]["thinking"], "hmm");
    EXPECT_EQ(lines[0]["response"], "");

    // The worker's own refusals (503 while loading) keep their Retry-After in Ollama's shape.
    const auto busy = error_response(
        ApiError{http::status::service_unavailable, "server_error", "model_loading", "loading", 2},
        true);
    EXPECT_EQ(busy[http::field::retry_after], "2");
    EXPECT_EQ(json::parse(busy.body()), json({{"error", "loading"}}));
}

}  // namespace
