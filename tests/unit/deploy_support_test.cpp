// Pieces of the boot ensemble that need no processes: log rotation by copy-and-truncate, and the
// gateway exports built from a status reply.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "os/log_rotation.h"
#include "supervisor/gateway_export.h"

using namespace ensemble;
using nlohmann::json;

namespace {

std::string read(const std::filesystem::path& p) {
    std::ifstream in(p);
    return {std::istreambuf_iterator<char>(in), {}};
}

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
    EXPECT_EQ(read(log), "after\n") << "appends land at the start of the truncated file";
    EXPECT_NE(read(dir / "engine-8100.log.1").find("round 3"), std::string::npos);
    EXPECT_NE(read(dir / "engine-8100.log.2").find("round 2"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir / "engine-8100.log.3")) << "keep = 2";
    EXPECT_EQ(rotate_if_larger(dir / "missing.log", 100, 2).value(), false);
    ::close(fd);
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
    ASSERT_EQ(entries.size(), 2U);
    EXPECT_EQ(entries[0]["handle"], "qwen-coder");
    EXPECT_EQ(entries[0]["url"], "http://[::1]:8100/v1");
    EXPECT_EQ(entries[0]["model"], "/m/q.gguf");
    EXPECT_EQ(entries[0]["aliases"], json::array({"coder"}));
    EXPECT_EQ(entries[1]["state"], "backoff");
}

TEST(GatewayExport, HostIsTheOverrideElseBindHostElseThisMachinesName) {
    EXPECT_EQ(export_host("127.0.0.1", ""), "127.0.0.1");
    EXPECT_EQ(export_host("0.0.0.0", "gpu-box"), "gpu-box");
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    EXPECT_EQ(export_host("0.0.0.0", ""), std::string(name));
}

}  // namespace
