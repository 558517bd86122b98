// The splicing JSON scanner against nlohmann::json, the parser the engines use: it must accept
// exactly what nlohmann accepts, and find the members nlohmann would see.
#include <gtest/gtest.h>

#include <array>
#include <nlohmann/json.hpp>
#include <random>

#include "protocol/json_scan.h"
#include "worker/request_policy.h"

using namespace ensemble;
using nlohmann::json;

namespace {

// nlohmann takes a NUL byte as the end of its input; the scan refuses one, as RFC 8259 does.
bool nlohmann_accepts(std::string_view text) {
    return text.find('\0') == std::string_view::npos &&
           !json::parse(text, nullptr, false).is_discarded();
}

void expect_agrees(const std::string& text) {
    const auto scanned = scan_top_level_member(text, "model");
    ASSERT_EQ(static_cast<bool>(scanned), nlohmann_accepts(text)) << "text: " << text;
    if (!scanned) return;
    const auto parsed = json::parse(text);
    EXPECT_EQ(scanned->is_object, parsed.is_object()) << text;
    if (!parsed.is_object()) return;
    EXPECT_EQ(scanned->values.empty(), !parsed.contains("model")) << text;
    if (!scanned->values.empty()) {  // the last one is the one a parser keeps
        const auto& last = scanned->values.back();
        EXPECT_EQ(json::parse(text.substr(last.begin, last.end - last.begin)), parsed["model"])
            << text;
    }
}

TEST(JsonScan, AgreesWithNlohmannOnEdgeCases) {
    for (const char* text : {"",
                             " ",
                             "{}",
                             "[]",
                             "{ }",
                             "[ ]",
                             "{\"model\":\"a\"}",
                             " {\"model\" : \"a\" } ",
                             "{\"model\":\"a\",\"model\":\"b\"}",
                             "{\"mod\\u0065l\":\"x\"}",
                             "{\"\\u006dodel\":\"x\"}",
                             "{\"mo\\u0064el\":\"x\",\"model\":\"y\"}",
                             "{\"mode\\u006c\":\"x\"}",
                             "{\"model\\u0020\":\"x\"}",
                             "{\"mod\\u00e9l\":\"x\",\"mod\u00e9l\":\"y\"}",
                             "{\"a\":{\"model\":1}}",
                             "[{\"model\":1}]",
                             "{\"model\":{\"model\":2}}",
                             "\"model\"",
                             "1",
                             "-0",
                             "-",
                             "01",
                             "1.",
                             ".5",
                             "1e",
                             "1e+",
                             "1E-7",
                             "-1.5e300",
                             "1e400",
                             "truex",
                             "tru",
                             "nul",
                             "null ",
                             "{\"a\":1,}",
                             "[1,]",
                             "{,}",
                             "{\"a\" 1}",
                             "{\"a\":}",
                             "{1:2}",
                             "{'a':1}",
                             "[1 2]",
                             "\"\\x\"",
                             "\"\\u12\"",
                             "\"\\uD800\"",
                             "\"\\uDC00\"",
                             "\"\\uD800\\uDC00\"",
                             "\"\\uD800\\u0041\"",
                             "\"\\uDBFF\\uDFFF\"",
                             "\"\t\"",
                             "\"\\t\"",
                             "\"\x7f\"",
                             "\"\xc3\xa9\"",
                             "\"\xc3\"",
                             "\"\xc0\x80\"",
                             "\"\xed\xa0\x80\"",
                             "\"\xf4\x90\x80\x80\"",
                             "\"\xf0\x9f\x98\x80\"",
                             "\"\xe0\x80\xaf\"",
                             "\"\xff\"",
                             "{\"\xc3\xa9\":1}",
                             "{}{}",
                             "[] x",
                             "\v{}",
                             "{\"model\":\"a\"}\n\r\t ",
                             "{\"model\":\"a\\\"b\"}",
                             "{\"model\":null}",
                             "{\"model\":[\"a\"]}",
                             "1e308",
                             "1.7976931348623157e308",
                             "1.8e308",
                             "-1e400",
                             "1e-400",
                             "0.0000e999999"}) {
        expect_agrees(text);
    }
    expect_agrees(std::string("{}\0", 3));
    EXPECT_FALSE(scan_top_level_member(std::string("{}\0", 3), "model"));
    expect_agrees(std::string(308, '9'));
    expect_agrees(std::string(309, '9'));
    expect_agrees("-" + std::string(400, '1') + ".5");
}

TEST(JsonScan, AgreesWithNlohmannOnRandomMutations) {
    const std::vector<std::string> seeds{
        R"({"model":"qwen3","messages":[{"role":"user","content":"h\u00e9llo \ud83d\ude00"}],)"
        R"("max_tokens":32,"temperature":0.7,"stream":true,"stop":null,"n":-1e3})",
        R"({"messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]})",
        "{\"model\" : \"a\" , \"model\" : \"b\\/c\" , \"x\" : [ true , false , null ] }"};
    const std::string alphabet = "{}[]\",:\\ 0123456789.eE+-tfnlrsua\xc3\xa9\xed\xf0\x80\x01";
    std::mt19937 random(14);
    for (int round = 0; round < 30000; ++round) {
        std::string text = seeds[random() % seeds.size()];
        for (int edits = 1 + static_cast<int>(random() % 3); edits > 0; --edits) {
            const auto at = random() % (text.size() + 1);
            switch (random() % 3) {
                case 0:
                    text.insert(at, 1, alphabet[random() % alphabet.size()]);
                    break;
                case 1:
                    if (at < text.size()) text.erase(at, 1);
                    break;
                default:
                    if (at < text.size()) text[at] = alphabet[random() % alphabet.size()];
            }
        }
        expect_agrees(text);
        if (HasFatalFailure()) return;
    }
}

// The scan with blocks noted as plain (in parts, as a body arrives) against the scan alone.
void expect_same_with_plain_blocks(const std::string& text, std::mt19937& random) {
    PlainBlocks plain;
    for (std::size_t noted = 0; noted < text.size();) {
        noted = std::min(text.size(), noted + 1 + random() % 300);
        plain.extend(std::string_view(text).substr(0, noted));
    }
    static constexpr std::array<std::string_view, 2> kKeys{"model", "adapters"};
    const auto alone = scan_top_level_members(text, kKeys);
    const auto with_blocks = scan_top_level_members(text, kKeys, kMaxJsonDepth, &plain);
    ASSERT_EQ(static_cast<bool>(alone), static_cast<bool>(with_blocks)) << text;
    if (!alone) {
        EXPECT_EQ(alone.error().code, with_blocks.error().code) << text;
        return;
    }
    EXPECT_EQ(alone->is_object, with_blocks->is_object);
    EXPECT_EQ(alone->object_open, with_blocks->object_open);
    EXPECT_EQ(alone->members, with_blocks->members);
    ASSERT_EQ(alone->values.size(), with_blocks->values.size()) << text;
    for (std::size_t i = 0; i < alone->values.size(); ++i) {
        EXPECT_EQ(alone->values[i].key, with_blocks->values[i].key);
        EXPECT_EQ(alone->values[i].begin, with_blocks->values[i].begin);
        EXPECT_EQ(alone->values[i].end, with_blocks->values[i].end);
    }
}

TEST(JsonScan, PlainBlocksChangeNoResult) {
    std::mt19937 random(64);
    // One byte that ends a plain run at every offset of a long string, around block boundaries:
    // each must still be seen (the scan may skip only blocks without one).
    for (const std::string stop :
         {"\"", "\\\"", "\\n", "\x01", "\x1f", "\x80", "\xc3\xa9", "\xc3", "\xff"}) {
        for (std::size_t at = 0; at < 300; at += 1 + at / 50) {
            std::string content(400, 'x');
            content.insert(at, stop);
            const std::string text = R"({"model":"a","padding":")" + content + R"("})";
            expect_same_with_plain_blocks(text, random);
            expect_agrees(text);  // the 64-byte loop against nlohmann, too
            expect_same_with_plain_blocks("[\"" + content + "\"]", random);
            // Cut short, so that a string runs to the end of the text, block-aligned or not.
            for (std::size_t cut = at; cut < text.size(); cut += 61)
                expect_same_with_plain_blocks(text.substr(0, cut), random);
            if (HasFatalFailure()) return;
        }
    }
    // Long content of many blocks (4 KiB words of them), with keys after it.
    const std::string long_content(20000, 'y');
    expect_same_with_plain_blocks(R"({"messages":")" + long_content + R"(","model":"m"})", random);
    expect_same_with_plain_blocks(
        R"({"messages":")" + long_content + R"(","adapters":1,"x":")" + long_content + "\x01\"}",
        random);
    // Random edits of a body that spans blocks.
    const std::string seed = R"({"messages":[{"role":"user","content":")" + std::string(700, 'z') +
                             R"("}],"model":"a","padding":")" + std::string(300, 'p') + R"("})";
    const std::string alphabet = "{}[]\",:\\ 0az\xc3\xa9\x01";
    for (int round = 0; round < 3000; ++round) {
        std::string text = seed;
        for (int edits = 1 + static_cast<int>(random() % 3); edits > 0; --edits) {
            const auto at = random() % text.size();
            text[at] = alphabet[random() % alphabet.size()];
        }
        expect_same_with_plain_blocks(text, random);
        if (HasFatalFailure()) return;
    }
}

TEST(JsonScan, PlainBlocksAreTrustedSoTheyMustBeTheTextsOwn) {
    // Blocks noted from one text hide a quote of another from the scan: the contract in
    // json_scan.h, and the proof that noted blocks are stepped over unread.
    const std::string noted_text = R"({"a":")" + std::string(256, 'x') + R"("})";
    std::string other = noted_text;
    other[130] = '"';  // inside a block that was plain
    PlainBlocks plain;
    plain.extend(noted_text);
    EXPECT_FALSE(scan_top_level_member(other, "model"));
    static constexpr std::array<std::string_view, 1> kKey{"model"};
    EXPECT_TRUE(scan_top_level_members(other, kKey, kMaxJsonDepth, &plain));
    // Blocks noted from a text of another length are not used: a body changed since it arrived.
    EXPECT_FALSE(scan_top_level_members(other + " ", kKey, kMaxJsonDepth, &plain));
    // 0x7f and 0x20 are plain; 0x1f and 0x80 are not.
    EXPECT_TRUE(scan_top_level_member("[\"" + std::string(100, '\x7f') + " \"]", "model"));
}

TEST(JsonScan, DepthIsBoundedAsParseBoundedJsonBoundsIt) {
    const auto nested = [](int depth) {
        return std::string(static_cast<std::size_t>(depth), '[') +
               std::string(static_cast<std::size_t>(depth), ']');
    };
    EXPECT_TRUE(scan_top_level_member(nested(kMaxJsonDepth), "model"));
    const auto deep = scan_top_level_member(nested(kMaxJsonDepth + 1), "model");
    ASSERT_FALSE(deep);
    EXPECT_EQ(deep.error().code, "too_deep");
    const auto very_deep = scan_top_level_member(nested(1'000'000), "model");
    ASSERT_FALSE(very_deep);
    EXPECT_EQ(very_deep.error().code, "too_deep");
}

TEST(PinModel, SplicesTheModelAndKeepsEveryOtherByte) {
    const ModelIdentity model{"tiny", {"t"}, "/models/tiny \"1\".gguf"};
    // Formatting, key order and number spelling survive; only the model's value changes.
    const std::string body = "{ \"messages\" : [ ], \"model\":\"t\" , \"temperature\": 1.50 }";
    const auto pinned = pin_model(body, model);
    ASSERT_TRUE(pinned);
    EXPECT_EQ(*pinned,
              "{ \"messages\" : [ ], \"model\":\"/models/tiny \\\"1\\\".gguf\" , "
              "\"temperature\": 1.50 }");
    // Every duplicate is pinned, whichever one the engine's parser keeps.
    const auto duplicates = pin_model(R"({"model":"tiny","model":"t"})", model);
    ASSERT_TRUE(duplicates);
    EXPECT_EQ(json::parse(*duplicates)["model"], model.engine_model_id);
    EXPECT_EQ(duplicates->find("\"t\""), std::string::npos) << *duplicates;
    // A duplicate naming another model is refused, escaped or not.
    EXPECT_FALSE(pin_model(R"({"model":"tiny","model":"/etc/passwd"})", model));
    EXPECT_FALSE(pin_model(R"({"model":"tiny","mod\u0065l":"/etc/passwd"})", model));
    EXPECT_TRUE(pin_model(R"({"model":"ti\u006ey"})", model));
    // Members that make an engine load other weights are refused, escaped or not.
    for (const char* loads :
         {R"({"model":"tiny","adapters":"/tmp/evil"})",
          R"({"draft_model":"org/other","messages":[]})", R"({"adapt\u0065rs":null})"}) {
        const auto refused = pin_model(loads, model);
        ASSERT_FALSE(refused) << loads;
        EXPECT_EQ(refused.error().code, "unsupported_parameter") << loads;
        EXPECT_EQ(api_error(refused.error()).status, http::status::bad_request);
    }
    // Nested, they are just data.
    EXPECT_TRUE(pin_model(R"({"metadata":{"adapters":"x","draft_model":"y"}})", model));
    // Missing: added, into an empty object and into a full one.
    for (const char* missing : {"{}", " { } ", R"({"messages":[]})"}) {
        const auto added = pin_model(missing, model);
        ASSERT_TRUE(added) << missing;
        const auto parsed = json::parse(*added);
        EXPECT_EQ(parsed["model"], model.engine_model_id) << *added;
        EXPECT_EQ(parsed.size(), json::parse(missing).size() + 1) << *added;
    }
}

}  // namespace
