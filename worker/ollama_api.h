// Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags, /api/show, /api/ps,
// /api/version) on a model port, translated to the engine's OpenAI API and back: the clients
// that speak only Ollama's (Open WebUI, Continue, editor and home-automation plugins) use a port
// as they would `ollama serve`. Pure functions and one filter for the answer; docs/API.md has
// the mapping and what is not supported.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"
#include "worker/answer_filter.h"
#include "worker/request_policy.h"

namespace ensemble::ollama {

enum class Call {
    chat,        // POST /api/chat
    generate,    // POST /api/generate
    embed,       // POST /api/embed
    embeddings,  // POST /api/embeddings (the older form: one prompt, one vector)
    tags,        // GET /api/tags
    show,        // POST /api/show
    ps,          // GET /api/ps
    version,     // GET /api/version
    managed,     // pull, push, create, copy, delete, blobs: models come from the config
    unknown
};
Call call_of(std::string_view path);
// "tiny:latest" names "tiny": Ollama's clients add the default tag.
std::string without_latest(std::string name);
// The method `call` takes ("GET" or "POST"; unknown: none).
std::string_view method_of(Call call);

// A refusal as Ollama's clients read one: {"error": "..."}.
http::response<http::string_body> error_response(http::status status, std::string_view message,
                                                 bool keep_alive);
// The same for one of the worker's OpenAI errors (its status, message and Retry-After).
http::response<http::string_body> error_response(const ApiError& error, bool keep_alive);

// A request to Ollama's API refused before its call is served: an unknown path (404), a
// missing or wrong API key (401), a model-management call (501: models come from the config),
// the wrong method (405). nullopt: served.
std::optional<http::response<http::string_body>> refusal(
    const http::request<http::string_body>& request, std::string_view api_key);

// GET / (and HEAD): what `ollama serve` answers, which some clients probe.
inline constexpr std::string_view kRunningText = "Ollama is running";

// What the port tells of its model in /api/tags, /api/show and /api/ps.
struct PortModel {
    ModelIdentity identity;
    std::string format;              // "gguf", "safetensors", ... (from the model's path)
    std::uint64_t file_bytes = 0;    // the model file's size (0: a directory or unknown)
    std::uint64_t memory_bytes = 0;  // held now by the worker and its engine
    long loaded_unix = 0;            // when the worker started
    int context = 0;                 // what one request may use (0: the engine's default)
    bool tools = false;              // the engine serves tool calls
    long expires_unix = 0;           // an idle on-demand load is unloaded then; 0: never
};
// The model at `path` as Ollama describes it: its format from the path, its file's size.
PortModel describe(ModelIdentity identity, const std::string& path);
// The models, in order: a model port lists its own, the front door every model of the config
// (/api/tags) or those loaded (/api/ps).
std::string tags_body(const std::vector<PortModel>& models);
std::string show_body(const PortModel& model);
std::string ps_body(const std::vector<PortModel>& models);
std::string version_body();

// The engine request for an Ollama request, or the answer given without the engine (a chat with
// no messages loads the model: it is loaded), or why it is refused (code "bad_request").
struct EngineRequest {
    std::string target;   // /v1/chat/completions, /v1/completions, /v1/embeddings
    std::string body;     // OpenAI's JSON, `model` as the client named it (pinned after)
    std::string model;    // the name the client used, echoed in every answer
    bool stream = false;  // the client wants NDJSON lines
    std::optional<std::string> answered;  // a local answer (JSON) instead of a request
};
Result<EngineRequest> to_engine(Call call, std::string_view body);
// Whether a chat or generate has nothing to generate: Ollama's clients send one to load the
// model, or, with keep_alive 0, to unload it.
bool loads_only(Call call, const nlohmann::json& request);
// The answer to one: done, with done_reason "load" or "unload".
std::string load_reply(Call call, const std::string& model, bool unload);
// Ollama's keep_alive: how long the model stays loaded once idle, in seconds — a number of
// seconds, or a Go duration ("5m", "1h30m", "300ms", "0"); negative: for ever
// (protocol::KeepAlive::kForever). nullopt: not given. Another type, or text that is not a
// duration, is refused (code "bad_request").
Result<std::optional<std::int64_t>> keep_alive_seconds(const nlohmann::json& value);
// The model a request body names (`model`, or the older `name`), "" if none.
std::string requested_name(std::string_view body);

// The engine's answer (an event stream or one JSON body) as Ollama's: NDJSON lines when
// streaming, one JSON object otherwise; an engine error as {"error": "..."}.
class Answer final : public AnswerFilter {
  public:
    using Clock = std::chrono::steady_clock;
    Answer(Call call, std::string model, bool stream, Clock::time_point began);

    void begin(http::response_header<>& header, bool event_stream) override;
    std::string feed(std::string_view bytes) override;
    std::string finish() override;
    std::string cut(const ApiError& error) override;
    http::response<http::string_body> error_response(const ApiError& error,
                                                     bool keep_alive) const override;

  private:
    struct ToolCall {
        std::string name;
        std::string arguments;  // as the engine streams it: JSON text, in pieces
    };
    std::string translate_event(std::string_view data);
    std::string engine_error(std::string_view data);
    std::string line(nlohmann::json object) const;
    nlohmann::json done_line() const;
    std::string whole_answer();

    Call call_;
    std::string model_;
    bool stream_;
    Clock::time_point began_;
    bool event_stream_ = false;
    bool failed_ = false;  // the engine answered an error status
    bool ended_ = false;   // a final line (done or error) was sent
    std::string pending_;  // bytes of an event not yet complete, or a whole JSON answer
    std::map<int, ToolCall> tool_calls_;
    std::string done_reason_ = "stop";
    nlohmann::json usage_;    // OpenAI's usage, when the engine sends it
    nlohmann::json timings_;  // llama-server's timings (prompt_ms, predicted_ms, ...)
};

}  // namespace ensemble::ollama
