#include "profiles/engine_preset.h"

#include <algorithm>
#include <cctype>

#include "profiles/command_template.h"

namespace ensemble {

namespace {

std::vector<EnginePreset> builtin_presets() {
    // The worker always binds engines to loopback; the public port is the worker's.
    return {
        {"llama.cpp",
         "llama-server",
         {"--model", "{model}", "--host", "127.0.0.1", "--port", "{port}", "--ctx-size",
          "{context}", "--parallel", "{parallel}", "--alias", "{handle}"},
         {"/health", false},
         "{handle}"},
        {"mlx-lm",
         "mlx_lm.server",
         {"--model", "{model}", "--host", "127.0.0.1", "--port", "{port}"},
         {"/v1/chat/completions", true},
         "{model}"},
        {"vllm",
         "vllm",
         {"serve", "{model}", "--host", "127.0.0.1", "--port", "{port}", "--max-model-len",
          "{context}", "--max-num-seqs", "{parallel}", "--served-model-name", "{handle}"},
         {"/health", false},
         "{handle}"},
    };
}

}  // namespace

std::string engine_env_name_problem(std::string_view name) {
    const bool valid =
        !name.empty() && name.size() <= 128 && !std::isdigit(static_cast<unsigned char>(name[0])) &&
        std::all_of(name.begin(), name.end(),
                    [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    if (!valid) return "must be letters, digits and '_', not starting with a digit";
    if (name.starts_with("ENSEMBLE_")) return "names starting ENSEMBLE_ are Ensemble's own";
    return "";
}

std::vector<std::string> preset_names() {
    std::vector<std::string> names;
    for (const auto& preset : builtin_presets())
        names.push_back(preset.name);
    names.emplace_back("command");
    return names;
}

Result<EnginePreset> find_preset(std::string_view name) {
    for (auto& preset : builtin_presets()) {
        if (preset.name == name) return preset;
    }
    std::string known;
    for (const auto& n : preset_names())
        known += (known.empty() ? "" : ", ") + n;
    return Error{"unknown_engine", "unknown engine preset '" + std::string(name) +
                                       "'; the presets are " + known +
                                       " (use 'command' with a command line for anything else)"};
}

Result<EnginePreset> command_preset(std::string_view command_line, std::string_view ready_path) {
    auto words = split_command_line(command_line);
    if (!words) return words.error();
    if (ready_path.empty() || ready_path.front() != '/') {
        return Error{"bad_probe", "the readiness path '" + std::string(ready_path) +
                                      "' must start with '/', for example /health or /v1/models"};
    }
    // Check the placeholders now so a typo is reported before anything is started.
    TemplateVars sample;
    for (const auto& name : known_placeholders())
        sample[name] = "x";
    auto checked = expand_argv(*words, sample);
    if (!checked) return checked.error();
    std::vector<std::string> args(words->begin() + 1, words->end());
    return EnginePreset{
        "command", words->front(), std::move(args), {std::string(ready_path), false}, "{handle}"};
}

}  // namespace ensemble
