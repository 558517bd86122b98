// Engine presets: how to start each supported inference engine, how to tell it is ready, and
// which model id it answers to. `command` engines describe all three themselves.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"

namespace ensemble {

// A readiness probe is a real answer from the engine, not just a live process: llama-server and
// vLLM answer /health with 200 only once loaded; mlx_lm.server's /health is always 200, so its
// probe is a one-token completion of the engine's own model (any other model id would make it
// load that one).
struct ReadinessProbe {
    std::string path = "/health";
    // POST to `path` a one-token chat completion naming the engine's model id, instead of a GET.
    bool one_token_completion = false;
};

struct EnginePreset {
    std::string name;               // "llama.cpp", "mlx-lm", "vllm", "command"
    std::string default_binary;     // looked up on PATH unless overridden
    std::vector<std::string> args;  // after the binary; each word a template
    ReadinessProbe probe;
    std::string engine_model_id;  // template: the id the engine itself answers to
    // The words, after `args`, that tell the engine where to listen: on a Unix socket
    // ({socket}) where it can, which no other local user can reach, else on a loopback port
    // ({port}). A `command` engine's own command line says where, and both are empty.
    std::vector<std::string> listen_on_socket;
    std::vector<std::string> listen_on_port;
};

// Whether the engine's command or model id uses the upstream's {upstream_url} or
// {upstream_handle}: it runs in front of another model (a chained model).
bool uses_upstream(const EnginePreset& preset);

// Whether the engine listens on a Unix socket when the worker has one to give it.
bool listens_on_socket(const EnginePreset& preset);

// The context one request may use: llama.cpp splits its context among its parallel slots; the
// others give each request the whole context.
int context_per_request(const EnginePreset& preset, int context, int parallel);
// The engine answers tool calls (llama.cpp runs its chat templates with Jinja).
bool serves_tools(const EnginePreset& preset);

// Whether `name` can be an engine environment variable: letters, digits and '_', not starting
// with a digit, at most 128 characters, and not ENSEMBLE_* (Ensemble's own); if not, why.
Status check_engine_env_name(std::string_view name);
// The most an engine's `env:` may hold in all (names and values): environments count towards
// the OS's limit on exec arguments (ARG_MAX, 1 MiB on macOS).
inline constexpr std::size_t kMaxEngineEnvBytes = 128 * 1024;

// The names of the built-in presets, for error messages and docs.
std::vector<std::string> preset_names();

// A built-in preset by name, or an error naming the ones that exist.
Result<EnginePreset> find_preset(std::string_view name);

// A `command` engine: the operator's own command line (with placeholders) and probe path. It
// listens on {socket} or on {port}: one of them, not both.
Result<EnginePreset> command_preset(std::string_view command_line, std::string_view ready_path);

}  // namespace ensemble
