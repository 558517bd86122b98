// Engine command templates and presets.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "profiles/command_template.h"
#include "profiles/engine_preset.h"

using namespace ensemble;

namespace {

const TemplateVars kVars{{"model", "/m/a.gguf"},
                         {"port", "9000"},
                         {"context", "4096"},
                         {"parallel", "2"},
                         {"handle", "qwen3-8b"}};

TEST(CommandTemplate, ExpandsEveryPlaceholder) {
    auto w = expand_word("--model={model}:{port}:{context}:{parallel}:{handle}", kVars);
    ASSERT_TRUE(w) << w.error().message;
    EXPECT_EQ(*w, "--model=/m/a.gguf:9000:4096:2:qwen3-8b");
}

TEST(CommandTemplate, DoubledBracesAreLiteral) {
    auto w = expand_word("{{\"port\": {port}}}", kVars);
    ASSERT_TRUE(w);
    EXPECT_EQ(*w, "{\"port\": 9000}");
}

TEST(CommandTemplate, UnknownPlaceholderNamesTheKnownOnes) {
    auto w = expand_word("{modle}", kVars);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error().code, "bad_template");
    EXPECT_NE(w.error().message.find("{modle}"), std::string::npos);
    EXPECT_NE(w.error().message.find("{model}"), std::string::npos);
}

TEST(CommandTemplate, UnbalancedBracesAreErrors) {
    EXPECT_FALSE(expand_word("{model", kVars));
    EXPECT_FALSE(expand_word("model}", kVars));
}

TEST(CommandTemplate, SplitsLikeAShell) {
    auto words = split_command_line(R"(  run --name 'two words' "double \"q\"" a\ b  )");
    ASSERT_TRUE(words);
    EXPECT_EQ(*words,
              (std::vector<std::string>{"run", "--name", "two words", "double \"q\"", "a b"}));
}

TEST(CommandTemplate, SplitRejectsUnterminatedQuotesAndEmptyCommands) {
    EXPECT_FALSE(split_command_line("run 'oops"));
    EXPECT_FALSE(split_command_line("   "));
    EXPECT_FALSE(split_command_line("trailing\\"));
}

TEST(EnginePreset, LlamaCppPresetPinsTheHandleAsAlias) {
    auto p = find_preset("llama.cpp");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->default_binary, "llama-server");
    EXPECT_EQ(p->probe.path, "/health");
    auto argv = expand_argv(p->args, kVars);
    ASSERT_TRUE(argv);
    const std::vector<std::string> expected{"--model",    "/m/a.gguf", "--ctx-size", "4096",
                                            "--parallel", "2",         "--alias",    "qwen3-8b"};
    EXPECT_EQ(*argv, expected);
}

TEST(EnginePreset, LlamaCppAndVllmListenOnAUnixSocketMlxOnlyOnAPort) {
    const TemplateVars socket{{"socket", "/run/e/engine-8100.sock"}};
    const TemplateVars port{{"port", "9000"}};
    const std::map<std::string, std::vector<std::string>> on_socket{
        {"llama.cpp", {"--host", "/run/e/engine-8100.sock"}},
        {"vllm", {"--uds", "/run/e/engine-8100.sock"}}};
    for (const auto& name : {"llama.cpp", "vllm", "mlx-lm"}) {
        auto p = find_preset(name);
        ASSERT_TRUE(p);
        const auto expected = on_socket.find(name);
        EXPECT_EQ(listens_on_socket(*p), expected != on_socket.end()) << name;
        if (expected != on_socket.end()) {
            EXPECT_EQ(*expand_argv(p->listen_on_socket, socket), expected->second) << name;
        }
        const std::vector<std::string> loopback{"--host", "127.0.0.1", "--port", "9000"};
        EXPECT_EQ(*expand_argv(p->listen_on_port, port), loopback) << name;
        // Where it listens is said once, in the listen words, never also in the arguments.
        for (const auto& word : p->args) {
            EXPECT_EQ(word.find("{port}"), std::string::npos) << name;
            EXPECT_EQ(word.find("{socket}"), std::string::npos) << name;
        }
    }
}

TEST(EnginePreset, MlxProbesWithARealCompletionBecauseItsHealthIsAlways200) {
    auto p = find_preset("mlx-lm");
    ASSERT_TRUE(p);
    EXPECT_TRUE(p->probe.one_token_completion);
    EXPECT_EQ(p->probe.path, "/v1/chat/completions");
    EXPECT_EQ(p->engine_model_id, "{model}");
}

TEST(EnginePreset, VllmServesTheHandleAsItsModelName) {
    auto p = find_preset("vllm");
    ASSERT_TRUE(p);
    auto argv = expand_argv(p->args, kVars);
    ASSERT_TRUE(argv);
    EXPECT_EQ(argv->front(), "serve");
    EXPECT_NE(std::find(argv->begin(), argv->end(), "--served-model-name"), argv->end());
}

TEST(EnginePreset, UnknownPresetListsTheKnownOnes) {
    auto p = find_preset("ollama");
    ASSERT_FALSE(p);
    EXPECT_NE(p.error().message.find("llama.cpp, mlx-lm, vllm, optillm, command"),
              std::string::npos);
}

TEST(EnginePreset, OptillmRunsInFrontOfItsUpstreamOnALoopbackPort) {
    auto p = find_preset("optillm");
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_TRUE(uses_upstream(*p));
    EXPECT_FALSE(listens_on_socket(*p)) << "OptiLLM has no Unix socket option";
    const TemplateVars vars{{"upstream_url", "http://127.0.0.1:8100/v1"},
                            {"upstream_handle", "coder"},
                            {"port", "40001"}};
    auto args = expand_argv(p->args, vars);
    ASSERT_TRUE(args) << args.error().message;
    EXPECT_EQ(*args, (std::vector<std::string>{"--base-url", "http://127.0.0.1:8100/v1", "--model",
                                               "coder"}));
    EXPECT_EQ(*expand_word(p->engine_model_id, vars), "coder")
        << "OptiLLM asks its upstream for this model";
    EXPECT_FALSE(uses_upstream(*find_preset("llama.cpp")));
    EXPECT_FALSE(expand_word("{upstream_url}", {{"model", "m"}})) << "no value outside a chain";
}

TEST(EnginePreset, CommandPresetChecksPlaceholdersAndProbePath) {
    auto ok = command_preset("my-server --weights {model} --listen 127.0.0.1:{port}", "/ready");
    ASSERT_TRUE(ok) << ok.error().message;
    EXPECT_EQ(ok->default_binary, "my-server");
    EXPECT_EQ(ok->probe.path, "/ready");
    EXPECT_FALSE(listens_on_socket(*ok));
    EXPECT_FALSE(command_preset("my-server --weights {weights}", "/ready"));
    EXPECT_FALSE(command_preset("my-server", "ready"));
}

TEST(EnginePreset, ACommandListensOnItsSocketOrItsPortNotBothNorNeither) {
    auto on_socket = command_preset("my-server --weights {model} --unix {socket}", "/ready");
    ASSERT_TRUE(on_socket) << on_socket.error().message;
    EXPECT_TRUE(listens_on_socket(*on_socket));
    for (const auto* line : {"my-server --unix {socket} --port {port}", "my-server {model}"}) {
        auto refused = command_preset(line, "/ready");
        ASSERT_FALSE(refused) << line;
        EXPECT_NE(refused.error().message.find("{port}"), std::string::npos);
        EXPECT_NE(refused.error().message.find("{socket}"), std::string::npos);
    }
}

}  // namespace
