// Newline-delimited JSON framing and message parsing: malformed input is an error value, never a
// crash, and the decoder keeps going after it.
#include <gtest/gtest.h>

#include "protocol/bounded_json.h"
#include "protocol/framing.h"
#include "protocol/messages.h"

using namespace ensemble;
using namespace ensemble::protocol;

namespace {

TEST(Framing, RoundTripsAcrossArbitrarySplits) {
    const nlohmann::json a = {{"type", "heartbeat"}, {"state", "ready\nwith newline"}};
    const nlohmann::json b = {{"verb", "status"}};
    const auto bytes = encode_frame(a) + encode_frame(b);
    for (std::size_t split = 0; split <= bytes.size(); ++split) {
        FrameDecoder d;
        d.feed(std::string_view(bytes).substr(0, split));
        d.feed(std::string_view(bytes).substr(split));
        auto first = d.next();
        auto second = d.next();
        ASSERT_TRUE(first && *first && second && *second) << split;
        EXPECT_EQ(first->value(), a);
        EXPECT_EQ(second->value(), b);
        EXPECT_FALSE(d.next());
    }
}

TEST(Framing, MalformedFrameIsAnErrorAndTheNextOneStillDecodes) {
    FrameDecoder d;
    d.feed("{not json\n{\"ok\":true}\n");
    auto bad = d.next();
    ASSERT_TRUE(bad);
    EXPECT_FALSE(*bad);
    EXPECT_EQ(bad->error().code, "malformed_frame");
    auto good = d.next();
    ASSERT_TRUE(good && *good);
}

// The parser does not recurse, but what walks the result does: a deep message would crash the
// supervisor (or a worker) the moment it was dumped or copied.
TEST(Framing, AMessageNestedTooDeepIsAnErrorNotACrash) {
    for (const std::size_t depth : {100'000U, 1'000'000U}) {
        FrameDecoder d(4 * depth + 64);
        d.feed("{\"a\":" + std::string(depth, '[') + std::string(depth, ']') + "}\n{\"ok\":1}\n");
        auto deep = d.next();
        ASSERT_TRUE(deep);
        ASSERT_FALSE(*deep);
        EXPECT_EQ(deep->error().code, "malformed_frame");
        EXPECT_NE(deep->error().message.find("more than 128 levels deep"), std::string::npos);
        auto next = d.next();
        ASSERT_TRUE(next && *next);
    }
}

TEST(BoundedJson, CountsOnlyRealNestingAndAcceptsWhatIsWithinTheLimit) {
    const auto nested = [](int depth) { return std::string(depth, '[') + std::string(depth, ']'); };
    EXPECT_TRUE(parse_bounded_json(nested(kMaxJsonDepth)));
    EXPECT_EQ(parse_bounded_json(nested(kMaxJsonDepth + 1)).error().code, "too_deep");
    // Brackets inside strings, escaped quotes included, are text.
    const std::string brackets_in_text =
        R"({"content": ")" + std::string(1000, '[') + R"(\"{{{{", "n": [[1]]})";
    auto parsed = parse_bounded_json(brackets_in_text);
    ASSERT_TRUE(parsed) << parsed.error().message;
    EXPECT_EQ((*parsed)["n"][0][0], 1);
    EXPECT_EQ(parse_bounded_json("{\"a\":").error().code, "invalid_json");
    EXPECT_TRUE(json_nesting_exceeds("[[[", 2));
    EXPECT_FALSE(json_nesting_exceeds("[[]][[]]", 2));
}

TEST(Framing, OversizedFrameIsDiscardedWithoutBufferingIt) {
    FrameDecoder d(64);
    d.feed(std::string(50, 'x'));
    d.feed(std::string(1000, 'x'));  // over the limit: dropped, not kept
    d.feed("\n{\"a\":1}\n");
    auto big = d.next();
    ASSERT_TRUE(big);
    EXPECT_EQ(big->error().code, "frame_too_large");
    auto next = d.next();
    ASSERT_TRUE(next && *next);
    EXPECT_EQ(next->value()["a"], 1);
}

TEST(Messages, RegisterRoundTrip) {
    Register r{"w-8100-1", "tok", 8100, 4242, kVersion, "qwen3-8b", 1, false, ""};
    auto parsed = parse_worker_message(to_json(r));
    ASSERT_TRUE(parsed);
    const auto& back = std::get<Register>(*parsed);
    EXPECT_EQ(back.worker_id, "w-8100-1");
    EXPECT_EQ(back.port, 8100);
    EXPECT_EQ(back.pid, 4242);
    EXPECT_EQ(back.handle, "qwen3-8b");
    EXPECT_EQ(back.files, 1);
    auto odd = to_json(r);
    odd["files"] = 2;  // a port has two sets of files, 0 and 1
    EXPECT_FALSE(parse_worker_message(odd));
    // A worker that does not say its model still registers (it just cannot be adopted
    // without a record).
    auto without = to_json(r);
    without.erase("handle");
    auto parsed_without = parse_worker_message(without);
    ASSERT_TRUE(parsed_without);
    EXPECT_EQ(std::get<Register>(*parsed_without).handle, "");
}

TEST(Messages, HeartbeatRoundTrip) {
    Heartbeat h;
    h.stats.state = "ready";
    h.stats.memory_bytes = 123456789;
    h.stats.requests = 7;
    h.stats.queue_depth = 2;
    h.stats.in_flight = 3;
    h.stats.load_mapped_bytes = 5;
    h.stats.load_file_bytes = 10;
    auto parsed = parse_worker_message(to_json(h));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(std::get<Heartbeat>(*parsed).stats.memory_bytes, 123456789U);
    EXPECT_EQ(std::get<Heartbeat>(*parsed).stats.load_mapped_bytes, 5U);
    EXPECT_EQ(std::get<Heartbeat>(*parsed).stats.load_file_bytes, 10U);
    EXPECT_EQ(std::get<Heartbeat>(*parsed).stats.in_flight, 3U);
    EXPECT_TRUE(std::get<Heartbeat>(*parsed).stats.busy());
    // More of a file resident than the file holds is a worker's lie, refused.
    h.stats.load_mapped_bytes = 11;
    EXPECT_FALSE(parse_worker_message(to_json(h)));
}

TEST(Messages, WrongTypesUnknownMessagesAndVersionsAreErrors) {
    EXPECT_FALSE(parse_worker_message(nlohmann::json::array()));
    EXPECT_FALSE(parse_worker_message({{"type", "dance"}}));
    EXPECT_FALSE(parse_worker_message({{"type", 5}}));
    EXPECT_FALSE(
        parse_worker_message({{"type", "heartbeat"}, {"state", "ready"}, {"requests", -1}}));
    auto r = to_json(Register{"w", "t", 1, 1, kVersion, "h", 0, false, ""});
    r["version"] = kVersion + 1;
    auto parsed = parse_worker_message(r);
    ASSERT_FALSE(parsed);
    EXPECT_EQ(parsed.error().code, "version_mismatch");
}

TEST(Messages, TheFrontDoorsKeepAliveAndRoutesRoundTripAndAreChecked) {
    const KeepAlive kept{"tiny", 8110, KeepAlive::kForever};
    const auto parsed = parse_worker_message(to_json(kept));
    ASSERT_TRUE(parsed) << parsed.error().message;
    const auto& back = std::get<KeepAlive>(*parsed);
    EXPECT_EQ(back.model, "tiny");
    EXPECT_EQ(back.port, 8110);
    EXPECT_EQ(back.seconds, KeepAlive::kForever);
    for (const auto& [key, value] :
         std::vector<std::pair<std::string, nlohmann::json>>{{"seconds", -3},
                                                             {"seconds", KeepAlive::kLongest + 1},
                                                             {"seconds", "5m"},
                                                             {"port", 0},
                                                             {"port", 70000},
                                                             {"model", "a b"}}) {
        auto odd = to_json(kept);
        odd[key] = value;
        EXPECT_FALSE(parse_worker_message(odd)) << key << "=" << value;
    }
    Route route;
    route.handle = "tiny";
    route.port = 8110;
    route.state = "loading";
    route.load_permille = 410;
    route.load_measure = "mapping";
    const auto routes = parse_routes(routes_message({route}));
    ASSERT_TRUE(routes && *routes);
    EXPECT_EQ((**routes).front().load_permille, 410);
    EXPECT_EQ((**routes).front().load_measure, "mapping");
    auto wrong = routes_message({route});
    wrong["models"][0]["load_permille"] = 1001;
    EXPECT_FALSE(*parse_routes(wrong));
    auto long_measure = routes_message({route});
    long_measure["models"][0]["load_measure"] = std::string(17, 'm');
    EXPECT_FALSE(*parse_routes(long_measure));
}

TEST(ControlRequests, VerbsCheckTheirFields) {
    EXPECT_TRUE(parse_control_request({{"verb", "status"}}));
    EXPECT_TRUE(parse_control_request({{"verb", "load"}, {"port", 8100}, {"model", "tiny"}}));
    EXPECT_FALSE(parse_control_request({{"verb", "load"}, {"port", 8100}}));
    EXPECT_FALSE(parse_control_request({{"verb", "unload"}, {"port", 0}}));
    EXPECT_FALSE(parse_control_request({{"verb", "unload"}, {"port", "8100"}}));
    EXPECT_FALSE(parse_control_request({{"verb", "explode"}}));
    auto profile = parse_control_request({{"verb", "profile-load"}, {"profile", "coding"}});
    ASSERT_TRUE(profile);
    EXPECT_EQ(profile->profile, "coding");
    EXPECT_TRUE(profile->wait);
    // "wait": false only for the verbs that start workers, and only as a boolean.
    auto no_wait = parse_control_request(
        {{"verb", "swap"}, {"port", 8100}, {"model", "tiny"}, {"wait", false}});
    ASSERT_TRUE(no_wait);
    EXPECT_FALSE(no_wait->wait);
    EXPECT_EQ(to_json(*no_wait)["wait"], false);
    EXPECT_FALSE(parse_control_request({{"verb", "status"}, {"wait", false}}));
    EXPECT_FALSE(
        parse_control_request({{"verb", "load"}, {"port", 8100}, {"model", "tiny"}, {"wait", 0}}));
    // Found in review: an empty profile reached a lookup that threw.
    EXPECT_FALSE(parse_control_request({{"verb", "profile-load"}, {"profile", ""}}));
    // "force" only where reserved ports can be taken.
    auto forced =
        parse_control_request({{"verb", "profile-load"}, {"profile", "coding"}, {"force", true}});
    ASSERT_TRUE(forced);
    EXPECT_TRUE(forced->force);
    EXPECT_EQ(to_json(*forced)["force"], true);
    EXPECT_FALSE(parse_control_request(
        {{"verb", "swap"}, {"port", 8100}, {"model", "tiny"}, {"force", true}}));
}

}  // namespace

namespace {

TEST(ControlRequests, EveryVerbRoundTripsByItsWireName) {
    for (const auto& v : kVerbs) {
        ControlRequest r;
        r.verb = v.verb;
        if (v.needs_port) r.port = 8100;
        if (v.needs_model) r.model = "tiny";
        if (v.needs_profile) r.profile = "coding";
        const auto wire = to_json(r);
        EXPECT_EQ(wire["verb"], v.name);
        EXPECT_EQ(wire.contains("lines"), v.takes_lines) << v.name;
        auto back = parse_control_request(wire);
        ASSERT_TRUE(back) << v.name << ": " << back.error().message;
        EXPECT_EQ(back->verb, v.verb) << v.name;
        EXPECT_EQ(verb_named(v.name), v.verb);
    }
    EXPECT_FALSE(verb_named("profile_load")) << "the wire name, not the enum's";
}

}  // namespace
