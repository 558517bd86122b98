// Token counting on responses as they pass through, split at every possible byte.
#include <gtest/gtest.h>

#include "worker/token_counter.h"

using ensemble::TokenCounter;

namespace {

const std::string kStream =
    "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\" w12\"}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
    "data: {\"choices\":[{\"text\":\"legacy\"}]}\n\n"
    "data: [DONE]\n\n";

TEST(TokenCounter, CountsContentEventsWhateverTheChunking) {
    for (std::size_t a = 0; a <= kStream.size(); ++a) {
        for (std::size_t b = a; b <= kStream.size(); b += 7) {
            TokenCounter c(true);
            c.feed(std::string_view(kStream).substr(0, a));
            c.feed(std::string_view(kStream).substr(a, b - a));
            c.feed(std::string_view(kStream).substr(b));
            ASSERT_EQ(c.tokens(), 3U) << "split at " << a << "," << b;
        }
    }
}

TEST(TokenCounter, ByteByByte) {
    TokenCounter c(true);
    for (char ch : kStream)
        c.feed(std::string_view(&ch, 1));
    EXPECT_EQ(c.tokens(), 3U);
}

TEST(TokenCounter, PlainAnswersUseTheirUsage) {
    TokenCounter c(false);
    const std::string body =
        R"({"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":17}})";
    c.feed(body.substr(0, 20));
    c.feed(body.substr(20));
    EXPECT_EQ(c.tokens(), 17U);
    TokenCounter none(false);
    none.feed("{\"error\":{}}");
    EXPECT_EQ(none.tokens(), 0U);
}

TEST(TokenCounter, APlainAnswerLongerThanItsTailStillCounts) {
    TokenCounter c(false);
    const std::string text(3 << 20, 'x');  // 3 MiB of generated text, in pieces
    c.feed(R"({"choices":[{"message":{"content":")");
    for (std::size_t at = 0; at < text.size(); at += 100'000)
        c.feed(std::string_view(text).substr(at, 100'000));
    c.feed(R"("}}],"usage":{"completion_tokens":4096,"prompt_tokens":3}})");
    EXPECT_EQ(c.tokens(), 4096U);
}

// With stream_options.include_usage the last event carries the engine's own counts: they win
// over the content events (a token that decodes to no text yet has empty content).
TEST(TokenCounter, AStreamsUsageEventGivesTheCountsWhenThereIsOne) {
    const std::string usage =
        "data: {\"choices\":[],\"usage\":{\"completion_tokens\":4,\"prompt_tokens\":56}}\n\n";
    const std::string with_usage =
        kStream.substr(0, kStream.size() - std::string("data: [DONE]\n\n").size()) + usage +
        "data: [DONE]\n\n";
    for (std::size_t a = 0; a <= with_usage.size(); a += 5) {
        TokenCounter c(true);
        c.feed(std::string_view(with_usage).substr(0, a));
        c.feed(std::string_view(with_usage).substr(a));
        ASSERT_EQ(c.content_events(), 3U) << a;
        ASSERT_EQ(c.tokens(), 4U) << a;
        ASSERT_EQ(c.prompt_tokens(), 56U) << a;
    }
    TokenCounter without(true);
    without.feed(kStream);
    EXPECT_EQ(without.prompt_tokens(), 0U);
    TokenCounter plain(false);
    plain.feed(R"({"usage":{"completion_tokens":5,"prompt_tokens":12,"total_tokens":17}})");
    EXPECT_EQ(plain.prompt_tokens(), 12U);
}

TEST(TokenCounter, PlainAnswersAreReadWithoutParsingAndNotFooledByContent) {
    const auto count = [](const std::string& body) {
        TokenCounter c(false);
        c.feed(body);
        return c.tokens();
    };
    // The key's name inside generated text is escaped, and is not a key.
    EXPECT_EQ(count(R"({"choices":[{"message":{"content":"\"completion_tokens\": 99"}}],)"
                    R"("usage": { "completion_tokens" :  5 , "prompt_tokens":3}})"),
              5U);
    EXPECT_EQ(count(R"({"choices":[{"text":"ends with \"completion_tokens"}],)"
                    R"("usage":{"completion_tokens":8}})"),
              8U);
    for (const char* odd :
         {R"({"usage":{"completion_tokens":-1}})", R"({"usage":{"completion_tokens":1.5}})",
          R"({"usage":{"completion_tokens":"7"}})", R"({"usage":{"completion_tokens":)"}) {
        EXPECT_EQ(count(odd), 0U) << odd;
    }
}

// llama-server's answer (usage, then id and timings after it), its usage at every offset from
// the start: the backward search reads eight bytes at a time, so a key may straddle any boundary.
TEST(TokenCounter, FindsUsageInLlamaServersAnswerAtEveryAlignment) {
    const std::string head =
        R"({"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant",)"
        R"("content":" w329 \"prompt_tokens\":5"}}],"created":1795855828,"model":"bench",)";
    const std::string usage =
        R"("usage":{"completion_tokens":12,"prompt_tokens":76,"total_tokens":88,)"
        R"("prompt_tokens_details":{"cached_tokens":0}},)";
    const std::string rest =
        R"("id":"chatcmpl-r5jXpilvp7PD3Rz2","timings":{"cache_n":0,"prompt_n":76,)"
        R"("prompt_ms":4.932,"predicted_n":1,"predicted_per_second":0.0}})";
    for (std::size_t pad = 0; pad < 16; ++pad) {
        TokenCounter c(false);
        c.feed(head + std::string(pad, ' ') + usage + rest);
        EXPECT_EQ(c.tokens(), 12U) << "padding " << pad;
        EXPECT_EQ(c.prompt_tokens(), 76U) << "padding " << pad;
    }
    TokenCounter key_first(false);  // the key at the very first byte
    key_first.feed(R"("completion_tokens":3)");
    EXPECT_EQ(key_first.tokens(), 3U);
}

}  // namespace
