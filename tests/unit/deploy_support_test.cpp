// Pieces of the boot ensemble that need no processes: log rotation by copy-and-truncate, the
// gateway exports built from a status reply, and the handles registry they write and check reads.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "os/log_rotation.h"
#include "supervisor/gateway_export.h"
#include "supervisor/handle_registry.h"
#include "tests/support/files.h"

using namespace ensemble;
using ensemble::testing::read_file;
using nlohmann::json;

namespace {

TEST(LogRotation, RotatesPastTheLimitKeepsNFilesAndTheWriterKeepsAppending) {
    const auto dir = std::filesystem::temp_directory_path() / "ensemble-rotation";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const auto log = dir / "engine-8100.log";
    // The writer, as an engine holds its log: O_APPEND, never reopened.
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    auto write_line = [fd](const std::string& text) {
        const auto line = text + "\n";
        ASSERT_EQ(::write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    };
    write_line("small");
    EXPECT_EQ(rotate_if_larger(log, 100, 2).value(), false) << "under the limit: untouched";
    for (int round = 1; round <= 3; ++round) {
        write_line("round " + std::to_string(round) + " " + std::string(120, 'x'));
        EXPECT_EQ(rotate_if_larger(log, 100, 2).value(), true);
        EXPECT_EQ(std::filesystem::file_size(log), 0U);
    }
    write_line("after");
    EXPECT_EQ(read_file(log), "after\n") << "appends land at the start of the truncated file";
    EXPECT_NE(read_file(dir / "engine-8100.log.1").find("round 3"), std::string::npos);
    EXPECT_NE(read_file(dir / "engine-8100.log.2").find("round 2"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir / "engine-8100.log.3")) << "keep = 2";
    EXPECT_EQ(rotate_if_larger(dir / "missing.log", 100, 2).value(), false);
    ::close(fd);
}

std::filesystem::path registry_dir(const std::string& name) {
    const auto dir = std::filesystem::temp_directory_path() / "ensemble-registry" / name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

ModelSpec model(const std::string& handle, std::vector<std::string> aliases = {}) {
    ModelSpec m;
    m.handle = handle;
    m.aliases = std::move(aliases);
    return m;
}

json status_with_two_ports() {
    return json::parse(R"({"bind_host":"127.0.0.1","ports":[
        {"port":8100,"model":"qwen-coder","aliases":["coder"],"model_path":"/m/q.gguf",
         "engine":"llama","state":"ready"},
        {"port":8101,"model":"tiny","aliases":[],"model_path":"/m/t.gguf","engine":"llama",
         "state":"backoff"}]})");
}

TEST(GatewayExport, LiteLlmModelListRoutesEachHandleToItsPort) {
    const auto yaml = litellm_model_list(status_with_two_ports(), "10.0.0.5", false);
    EXPECT_NE(yaml.find("model_list:\n  - model_name: \"qwen-coder\"\n    litellm_params:\n"
                        "      model: \"openai/qwen-coder\"\n"
                        "      api_base: \"http://10.0.0.5:8100/v1\"\n"),
              std::string::npos)
        << yaml;
    EXPECT_NE(yaml.find("api_base: \"http://10.0.0.5:8101/v1\""), std::string::npos);
    EXPECT_EQ(yaml.find("\"coder\""), std::string::npos) << "aliases only when asked";
    const auto with_aliases = litellm_model_list(status_with_two_ports(), "10.0.0.5", true);
    EXPECT_NE(with_aliases.find("model_name: \"coder\"\n    litellm_params:\n"
                                "      model: \"openai/qwen-coder\""),
              std::string::npos)
        << with_aliases;
    EXPECT_NE(litellm_model_list(json{{"ports", json::array()}}, "h", false).find("model_list: []"),
              std::string::npos);
}

TEST(GatewayExport, HandlesAreJsonLinesAndIpv6HostsAreBracketed) {
    std::istringstream lines(handles_jsonl(status_with_two_ports(), "::1"));
    std::string line;
    std::vector<json> entries;
    while (std::getline(lines, line))
        entries.push_back(json::parse(line));
    ASSERT_EQ(entries.size(), 3U) << "each model and each alias";
    EXPECT_EQ(entries[0]["handle"], "qwen-coder");
    EXPECT_EQ(entries[0]["base_model"], "qwen-coder");
    EXPECT_EQ(entries[0]["selector"], "openai/qwen-coder");
    EXPECT_EQ(entries[0]["api_base"], "http://[::1]:8100/v1");
    EXPECT_EQ(entries[1]["handle"], "coder");
    EXPECT_EQ(entries[1]["base_model"], "qwen-coder") << "an alias reaches its model";
    EXPECT_EQ(entries[1]["selector"], "openai/qwen-coder");
    EXPECT_EQ(entries[2]["state"], "backoff");
}

// What export handles writes, check --registry reads back without a finding.
TEST(HandleRegistry, WhatExportWritesReadsBackAndMatchesTheLivePorts) {
    const auto dir = registry_dir("RoundTrip");
    const auto file = dir / "handles.jsonl";
    std::ofstream(file) << handles_jsonl(status_with_two_ports(), "studio.lan");
    const auto read = read_registry(file);
    EXPECT_TRUE(read.problems.empty()) << read.problems.at(0).text;
    ASSERT_EQ(read.entries.size(), 3U);
    EXPECT_EQ(read.entries[1].line, 2);
    EXPECT_EQ(read.entries[1].port, 8100);
    Config config;
    config.source = "ensemble.yaml";
    config.models["qwen-coder"] = model("qwen-coder", {"coder"});
    config.models["tiny"] = model("tiny");
    const auto findings = compare_registry(file, read.entries, config, status_with_two_ports());
    EXPECT_TRUE(findings.empty()) << findings.at(0).text;
}

TEST(HandleRegistry, MalformedLinesDuplicatesAndHugeLinesArePositionedErrors) {
    const auto dir = registry_dir("Malformed");
    const auto file = dir / "handles.jsonl";
    const std::string good =
        R"({"handle":"a","base_model":"tiny","selector":"openai/tiny","api_base":"http://h:8101/v1"})";
    {
        std::ofstream out(file);
        out << good << "\n"   // 1
            << "{not json\n"  // 2
            << "[1,2]\n"      // 3
            << R"({"handle":"b","base_model":"tiny","selector":"openai/tiny"})"
            << "\n"  // 4
            << R"({"handle":"c","base_model":"tiny","selector":"openai/tiny","api_base":"http://h/v1"})"
            << "\n"                                                   // 5
            << "\n"                                                   // 6: blank, skipped
            << good << "\n"                                           // 7: duplicate
            << std::string(10 * 1024 * 1024, 'x') << "\n"             // 8: 10 MB
            << std::string(200, '[') + std::string(200, ']') << "\n"  // 9: deep
            << R"({"handle":"d","base_model":"tiny","selector":"openai/tiny","api_base":"http://h:8101/v1"})";
    }
    const auto read = read_registry(file);
    ASSERT_EQ(read.entries.size(), 2U) << "a and d";
    EXPECT_EQ(read.entries[1].line, 10) << "after the huge line, lines still count";
    std::vector<std::string> texts;
    for (const auto& p : read.problems)
        texts.push_back(p.text);
    const auto has = [&](const std::string& text) {
        return std::any_of(texts.begin(), texts.end(),
                           [&](const auto& t) { return t.find(text) != std::string::npos; });
    };
    const auto f = file.string();
    EXPECT_TRUE(has(f + ":2: not valid JSON")) << ::testing::PrintToString(texts);
    EXPECT_TRUE(has(f + ":3: a line is one JSON object, not array"));
    EXPECT_TRUE(has(f + ":4: \"api_base\" is missing"));
    EXPECT_TRUE(has(f + ":5: api_base 'http://h/v1' names no port; write http://HOST:PORT/v1"));
    EXPECT_TRUE(has(f + ":7: handle 'a' is listed again (first at line 1)"));
    EXPECT_TRUE(has(f + ":8: longer than 64 KiB, not read"));
    EXPECT_TRUE(has(f + ":9: refused: it nests arrays and objects more than 128 levels deep"));
    EXPECT_EQ(texts.size(), 7U) << ::testing::PrintToString(texts);
    EXPECT_FALSE(read_registry(dir / "missing.jsonl").problems.empty());
}

// Found by an adversarial run: std::regex recursed per character of a 30 KB api_base and
// crashed; bad lines were unbounded (3 million lines: 825 MB and 3 million messages); a FIFO
// blocked the open and /dev/zero never ended.
TEST(HandleRegistry, HostileFilesAreBoundedAndSaidOnce) {
    const auto dir = registry_dir("Hostile");
    const auto line = [](const std::string& handle, const std::string& api_base) {
        return json{{"handle", handle},
                    {"base_model", "tiny"},
                    {"selector", "openai/tiny"},
                    {"api_base", api_base}}
                   .dump() +
               "\n";
    };
    std::ofstream(dir / "long.jsonl")
        << line("a", "http://h:1/" + std::string(40000, 'x'))
        << line("b", "http://" + std::string(40000, 'h') + ":1/v1")
        << line("c", "http://h:8100/chat") << line("d", "ftp://h:1/v1")
        << line("e", "http://[::1]:8100/v1") << line("f", "http://h:99999/v1")
        << line("\x1b]0;owned\x07", "http://h:8100/v1")
        << line("g", "http://h:8100/v1").insert(0, 1, '\0');
    const auto read = read_registry(dir / "long.jsonl");
    ASSERT_EQ(read.entries.size(), 2U) << "e and the escape";
    EXPECT_EQ(read.entries[0].port, 8100) << "an IPv6 literal";
    std::string all;
    for (const auto& p : read.problems)
        all += p.text + "\n";
    EXPECT_NE(all.find(":1: \"api_base\" is longer than 2048 bytes"), std::string::npos) << all;
    EXPECT_NE(all.find(":2: \"api_base\" is longer than 2048 bytes"), std::string::npos) << all;
    EXPECT_NE(all.find(":3: api_base 'http://h:8100/chat' does not end in /v1"), std::string::npos)
        << all;
    EXPECT_NE(all.find(":4: api_base 'ftp://h:1/v1' is not an http:// URL"), std::string::npos);
    EXPECT_NE(all.find(":6: api_base 'http://h:99999/v1' names no port from 1 to 65535"),
              std::string::npos);
    EXPECT_NE(all.find(":8: not valid JSON"), std::string::npos) << "a NUL byte: " << all;
    EXPECT_LT(all.size(), 2000U) << "nothing echoed at length";

    {
        std::ofstream flood(dir / "flood.jsonl");
        for (int i = 0; i < 3000000; ++i)
            flood << "x\n";
    }
    const auto flooded = read_registry(dir / "flood.jsonl");
    EXPECT_EQ(flooded.problems.size(), 101U) << "100 and a line saying there are more";
    EXPECT_NE(flooded.problems.back().text.find("more problems from line 101 on are not listed"),
              std::string::npos)
        << flooded.problems.back().text;

    const auto refused = [](const std::filesystem::path& path) {
        const auto r = read_registry(path);
        EXPECT_FALSE(r.readable) << path;
        return r.problems.empty() ? std::string() : r.problems.front().text;
    };
    EXPECT_NE(refused(dir).find("is a directory"), std::string::npos);
    EXPECT_NE(refused("/dev/zero").find("is not a regular file"), std::string::npos);
    ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
    EXPECT_NE(refused(dir / "fifo").find("is not a regular file"), std::string::npos)
        << "refused without opening it (an open would wait for a writer)";
    // Found adversarially: /proc/kmsg is a "regular file" whose read blocks (and, as root,
    // consumes the kernel's messages); it reports 0 bytes, and is read as that.
    if (std::filesystem::exists("/proc/kmsg")) {
        const auto kmsg = read_registry("/proc/kmsg");
        EXPECT_TRUE(kmsg.entries.empty());
    }
    // Nor may a file's name or contents drive the terminal: C1 controls (8-bit CSI) and bytes
    // that are not UTF-8 are shown as '?', as C0 controls are.
    const auto named = dir / "evil\x1b[2Jname\xc2\x9b.jsonl";
    std::ofstream(named) << "{\"handle\": \"x\xc2\x9b"
                            "31m\xff\", \"base_model\": 1}\n";
    const auto evil = read_registry(named);
    ASSERT_EQ(evil.problems.size(), 1U);
    EXPECT_EQ(evil.problems[0].text.find('\x1b'), std::string::npos) << evil.problems[0].text;
    EXPECT_EQ(evil.problems[0].text.find("\xc2\x9b"), std::string::npos);
    EXPECT_NE(evil.problems[0].text.find("evil?[2Jname?.jsonl:1: "), std::string::npos)
        << evil.problems[0].text;
    // Overlong forms (an ESC, a CSI), surrogates and leads past U+10FFFF are not UTF-8 either.
    EXPECT_EQ(printable("a\xc0\x9b"
                        "b\xe0\x82\x9b"
                        "c\xed\xa0\x80"
                        "d\xf5\x80\x80\x80"),
              "a??b???c???d????");
    EXPECT_EQ(printable("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82"),
              "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82");
    std::filesystem::resize_file(dir / "flood.jsonl", 17 << 20);
    EXPECT_NE(refused(dir / "flood.jsonl").find("is larger than 16 MiB"), std::string::npos);
}

TEST(HandleRegistry, ComparedWithTheConfigAndTheLivePorts) {
    const auto dir = registry_dir("Compare");
    const auto file = dir / "handles.jsonl";
    const auto line = [](const std::string& handle, const std::string& base,
                         const std::string& selector, int port) {
        return json{{"handle", handle},
                    {"base_model", base},
                    {"selector", selector},
                    {"api_base", "http://studio:" + std::to_string(port) + "/v1"}}
                   .dump() +
               "\n";
    };
    std::ofstream(file) << line("coder", "qwen-coder", "openai/coder", 8101)  // 1: wrong port
                        << line("ghost", "gone", "openai/gone", 8100)         // 2: not in config
                        << line("t", "tiny", "tiny", 8101)                    // 3: no openai/
                        << line("t2", "tiny", "openai/other", 8102)           // 4: 404, not served
                        << line("chat", "chat", "openai/chat", 8102);         // 5: not served now
    Config config;
    config.source = "ensemble.yaml";
    config.models["qwen-coder"] = model("qwen-coder", {"coder"});
    config.models["tiny"] = model("tiny");
    config.models["chat"] = model("chat");
    config.models["spare"] = model("spare");
    const auto read = read_registry(file);
    ASSERT_TRUE(read.problems.empty());
    auto texts = [](const std::vector<RegistryFinding>& found) {
        std::vector<std::string> out;
        for (const auto& f : found)
            out.push_back((f.error ? "error: " : "warning: ") + f.text);
        return out;
    };
    const auto f = file.string();
    EXPECT_EQ(texts(compare_registry(file, read.entries, config, status_with_two_ports())),
              (std::vector<std::string>{
                  "error: " + f +
                      ":1: 'coder' goes to port 8101 (api_base), which serves 'tiny', "
                      "not 'qwen-coder'; 'qwen-coder' is on port 8100",
                  "error: " + f +
                      ":2: 'ghost': base model 'gone' is not a model of the config "
                      "ensemble.yaml",
                  "error: " + f +
                      ":3: 't': selector 'tiny' does not start with openai/ "
                      "(Ensemble's ports speak the OpenAI API: LiteLLM's openai/ provider)",
                  "error: " + f +
                      ":4: 't2': selector 'openai/other' asks for 'other', which the "
                      "port serving 'tiny' does not answer to (404); use openai/tiny",
                  "error: " + f +
                      ":4: 't2' goes to port 8102 (api_base), where nothing is "
                      "served; 'tiny' is on port 8101",
                  "warning: " + f + ":5: 'chat': 'chat' is not served now (nothing on port 8102)",
                  "error: " + f +
                      ": missing: 'qwen-coder' is served on port 8100, but no line "
                      "routes to it ('ensemble export handles' prints the lines of what runs)"}));
    // Without ensembled: the config alone, and its models without a handle are warnings.
    const auto offline = texts(compare_registry(file, read.entries, config, std::nullopt));
    EXPECT_EQ(offline.back(), "warning: " + f + ": model 'spare' of the config has no handle here");
    EXPECT_EQ(offline.size(), 4U) << ::testing::PrintToString(offline);
}

TEST(GatewayExport, HostIsTheOverrideElseBindHostElseThisMachinesName) {
    EXPECT_EQ(export_host("127.0.0.1", ""), "127.0.0.1");
    EXPECT_EQ(export_host("0.0.0.0", "gpu-box"), "gpu-box");
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    EXPECT_EQ(export_host("0.0.0.0", ""), std::string(name));
}

}  // namespace
