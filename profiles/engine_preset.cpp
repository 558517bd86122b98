#include "profiles/engine_preset.h"

#include <algorithm>
#include <cctype>

#include "profiles/command_template.h"

namespace ensemble {

namespace {

std::vector<EnginePreset> builtin_presets() {
    // The worker always binds engines to loopback; the public port is the worker's.
    // llama-server takes a --host ending in .sock as a Unix socket; vLLM has --uds;
    // mlx_lm.server can only listen on TCP.
    return {
        {.name = "llama.cpp",
         .default_binary = "llama-server",
         .args = {"--model", "{model}", "--ctx-size", "{context}", "--parallel", "{parallel}",
                  "--alias", "{handle}"},
         .probe = {"/health", false},
         .engine_model_id = "{handle}",
         .listen_on_socket = {"--host", "{socket}"},
         .listen_on_port = {"--host", "127.0.0.1", "--port", "{port}"}},
        {.name = "mlx-lm",
         .default_binary = "mlx_lm.server",
         .args = {"--model", "{model}"},
         .probe = {"/v1/chat/completions", true},
         .engine_model_id = "{model}",
         .listen_on_socket = {},
         .listen_on_port = {"--host", "127.0.0.1", "--port", "{port}"}},
        {.name = "vllm",
         .default_binary = "vllm",
         .args = {"serve", "{model}", "--max-model-len", "{context}", "--max-num-seqs",
                  "{parallel}", "--served-model-name", "{handle}"},
         .probe = {"/health", false},
         .engine_model_id = "{handle}",
         .listen_on_socket = {"--uds", "{socket}"},
         .listen_on_port = {"--host", "127.0.0.1", "--port", "{port}"}},
        // OptiLLM in front of another port's model: it asks that model for every answer, with
        // the technique its model's args choose (--approach moa). It has no --host: it listens
        // on every interface (docs/SECURITY.md).
        {.name = "optillm",
         .default_binary = "optillm",
         .args = {"--base-url", "{upstream_url}", "--model", "{upstream_handle}"},
         .probe = {"/health", false},
         .engine_model_id = "{upstream_handle}",
         .listen_on_socket = {},
         .listen_on_port = {"--port", "{port}"}},
    };
}

bool mentions(const std::vector<std::string>& words, std::string_view placeholder) {
    return std::any_of(words.begin(), words.end(), [&](const std::string& word) {
        return word.find(placeholder) != std::string::npos;
    });
}

}  // namespace

Status check_engine_env_name(std::string_view name) {
    const bool valid =
        !name.empty() && name.size() <= 128 && !std::isdigit(static_cast<unsigned char>(name[0])) &&
        std::all_of(name.begin(), name.end(),
                    [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    if (!valid)
        return Error{"bad_env_name", "must be letters, digits and '_', not starting with a digit"};
    if (name.starts_with("ENSEMBLE_"))
        return Error{"bad_env_name", "names starting ENSEMBLE_ are Ensemble's own"};
    return Ok{};
}

bool uses_upstream(const EnginePreset& preset) {
    for (const auto* placeholder : {"{upstream_url}", "{upstream_handle}"}) {
        if (mentions(preset.args, placeholder) ||
            preset.engine_model_id.find(placeholder) != std::string::npos)
            return true;
    }
    return false;
}

int context_per_request(const EnginePreset& preset, int context, int parallel) {
    return preset.name == "llama.cpp" ? context / std::max(1, parallel) : context;
}

bool serves_tools(const EnginePreset& preset) {
    return preset.name == "llama.cpp";
}

bool listens_on_socket(const EnginePreset& preset) {
    return !preset.listen_on_socket.empty() || mentions(preset.args, "{socket}");
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
    const bool on_socket = mentions(args, "{socket}");
    if (on_socket == mentions(args, "{port}")) {
        return Error{"bad_template",
                     "the engine command must say where the engine listens: on {port} (a "
                     "loopback port) or on {socket} (a Unix socket, which only this user can "
                     "reach), one of them; it has " +
                         std::string(on_socket ? "both" : "neither")};
    }
    return EnginePreset{.name = "command",
                        .default_binary = words->front(),
                        .args = std::move(args),
                        .probe = {std::string(ready_path), false},
                        .engine_model_id = "{handle}",
                        .listen_on_socket = {},
                        .listen_on_port = {}};
}

}  // namespace ensemble
