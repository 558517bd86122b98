#include "worker/ollama_api.h"

#include <filesystem>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "protocol/bounded_json.h"
#include "protocol/messages.h"

namespace ensemble::ollama {

using nlohmann::json;

namespace {

// The version /api/version reports: the Ollama API this port speaks (clients check it before
// using /api/chat's tools and structured outputs).
constexpr std::string_view kOllamaApiVersion = "0.6.0";
// A whole (non-streamed) answer, or one event of a stream, larger than this is not translated.
constexpr std::size_t kMaxAnswerBytes = 32ULL << 20;

// RFC 3339 with nanoseconds, in UTC, as Ollama writes `created_at`.
std::string now_rfc3339() {
    const auto now = std::chrono::system_clock::now();
    const auto seconds = std::chrono::system_clock::to_time_t(now);
    const auto nanos =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count() %
        1000000000;
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    std::array<char, 64> text{};
    const auto n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%S", &utc);
    std::array<char, 16> fraction{};
    std::snprintf(fraction.data(), fraction.size(), ".%09lldZ", static_cast<long long>(nanos));
    return std::string(text.data(), n) + fraction.data();
}

std::string rfc3339_of(long unix_seconds) {
    const auto seconds = static_cast<std::time_t>(unix_seconds);
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    std::array<char, 64> text{};
    const auto n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%SZ", &utc);
    return std::string(text.data(), n);
}

Error bad(const std::string& why) {
    return Error{"bad_request", why};
}

// `object[name]` when `object` is an object that has it, else null. Requests and answers are
// untrusted: nlohmann's value() and get() throw on a member of another type.
const json& at(const json& object, std::string_view name) {
    static const json kNull;
    if (!object.is_object()) return kNull;
    const auto it = object.find(name);
    return it == object.end() ? kNull : *it;
}

std::string text_at(const json& object, std::string_view name) {
    const auto& value = at(object, name);
    return value.is_string() ? value.get<std::string>() : std::string();
}

// Text for the wire: bytes that are not UTF-8 (a path, an engine's message) become U+FFFD
// rather than an exception.
std::string dump(const json& value) {
    return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The image's media type from its first bytes (Ollama's clients send bare base64).
std::string data_url(const std::string& base64) {
    std::string type = "image/jpeg";
    if (base64.starts_with("iVBOR")) type = "image/png";
    if (base64.starts_with("R0lGOD")) type = "image/gif";
    if (base64.starts_with("UklGR")) type = "image/webp";
    return "data:" + type + ";base64," + base64;
}

// A message's text and images as OpenAI's content: a string, or parts when there are images.
Result<json> content_of(const json& message) {
    const auto& content = at(message, "content");
    if (!content.is_null() && !content.is_string())
        return bad("a message's content must be a string");
    const json text = content.is_string() ? content : json("");
    const auto& images = at(message, "images");
    if (images.is_null() || (images.is_array() && images.empty())) return text;
    if (!images.is_array()) return bad("a message's images must be an array of base64 strings");
    json parts = json::array();
    if (!text.get<std::string>().empty()) parts.push_back({{"type", "text"}, {"text", text}});
    for (const auto& image : images) {
        if (!image.is_string()) return bad("each image must be a base64 string");
        parts.push_back(
            {{"type", "image_url"}, {"image_url", {{"url", data_url(image.get<std::string>())}}}});
    }
    return parts;
}

// Ollama's `options` as OpenAI's (and llama-server's) sampling parameters. `num_ctx` is the
// model's, set in the config: it cannot change per request.
void map_options(const json& options, json& out) {
    if (!options.is_object()) return;
    static constexpr std::array<std::string_view, 14> kSameName{"temperature",
                                                                "top_p",
                                                                "top_k",
                                                                "min_p",
                                                                "seed",
                                                                "stop",
                                                                "repeat_penalty",
                                                                "presence_penalty",
                                                                "frequency_penalty",
                                                                "typical_p",
                                                                "repeat_last_n",
                                                                "mirostat",
                                                                "mirostat_tau",
                                                                "mirostat_eta"};
    for (const auto name : kSameName) {
        const auto& value = at(options, name);
        if (!value.is_null()) out[std::string(name)] = value;
    }
    // num_predict: -1 is "until the context is full", -2 "until it fills": no limit here.
    if (const auto& n = at(options, "num_predict"); n.is_number_integer() && n.get<long long>() > 0)
        out["max_tokens"] = n;
}

// `format`: "json", or a JSON schema the answer must follow.
Status map_format(const json& request, json& out) {
    const auto& format = at(request, "format");
    if (format.is_null() || format == "") return Ok{};
    if (format == "json") {
        out["response_format"] = {{"type", "json_object"}};
    } else if (format.is_object()) {
        out["response_format"] = {{"type", "json_schema"},
                                  {"json_schema", {{"name", "format"}, {"schema", format}}}};
    } else {
        return bad("format must be \"json\" or a JSON schema object");
    }
    return Ok{};
}

// Ollama's tool calls carry no ids; OpenAI's answers must name the call they answer. Each call
// gets "call_N" in order, and a tool message answers the oldest unanswered call of its name.
Result<json> chat_messages(const json& messages) {
    if (!messages.is_array()) return bad("messages must be an array");
    json out = json::array();
    std::vector<std::pair<std::string, std::string>> unanswered;  // id, tool name
    int next_id = 0;
    for (const auto& m : messages) {
        if (!at(m, "role").is_string()) return bad("each message is an object with a role");
        auto content = content_of(m);
        if (!content) return content.error();
        json message = {{"role", m["role"]}, {"content", *content}};
        if (const auto& calls = at(m, "tool_calls"); calls.is_array()) {
            json openai_calls = json::array();
            for (const auto& call : calls) {
                const auto& function = at(call, "function");
                const auto id = "call_" + std::to_string(next_id++);
                const auto name = text_at(function, "name");
                const auto& arguments = at(function, "arguments");
                const auto arguments_text = arguments.is_string() ? arguments.get<std::string>()
                                            : arguments.is_null() ? std::string("{}")
                                                                  : dump(arguments);
                openai_calls.push_back(
                    {{"id", id},
                     {"type", "function"},
                     {"function", {{"name", name}, {"arguments", arguments_text}}}});
                unanswered.emplace_back(id, name);
            }
            message["tool_calls"] = openai_calls;
        }
        if (m["role"] == "tool") {
            const auto name =
                at(m, "tool_name").is_string() ? text_at(m, "tool_name") : text_at(m, "name");
            auto it = std::find_if(unanswered.begin(), unanswered.end(),
                                   [&](const auto& call) { return call.second == name; });
            if (it == unanswered.end()) it = unanswered.begin();
            if (it == unanswered.end()) {
                message["tool_call_id"] = "call_" + std::to_string(next_id++);
            } else {
                message["tool_call_id"] = it->first;
                unanswered.erase(it);
            }
        }
        out.push_back(std::move(message));
    }
    return out;
}

// Arguments as Ollama sends them: an object (OpenAI's are JSON text).
json arguments_object(const std::string& text) {
    auto parsed = parse_bounded_json(text.empty() ? "{}" : text);
    return parsed && parsed->is_object() ? *parsed : json(text);
}

// An error's message, whatever shape the engine gave it.
std::string message_of(const json& error) {
    if (error.is_string()) return error.get<std::string>();
    if (const auto& message = at(error, "message"); message.is_string())
        return message.get<std::string>();
    return dump(error);
}

json details_of(const PortModel& model) {
    return {{"parent_model", ""},        {"format", model.format}, {"family", ""},
            {"families", json::array()}, {"parameter_size", ""},   {"quantization_level", ""}};
}

json model_entry(const PortModel& model) {
    return {{"name", model.identity.handle},
            {"model", model.identity.handle},
            {"modified_at", rfc3339_of(model.loaded_unix)},
            {"size", model.file_bytes},
            {"digest", ""},
            {"details", details_of(model)}};
}

}  // namespace

Call call_of(std::string_view path) {
    static const std::array<std::pair<std::string_view, Call>, 15> kCalls{{
        {"/api/chat", Call::chat},
        {"/api/generate", Call::generate},
        {"/api/embed", Call::embed},
        {"/api/embeddings", Call::embeddings},
        {"/api/tags", Call::tags},
        {"/api/show", Call::show},
        {"/api/ps", Call::ps},
        {"/api/version", Call::version},
        {"/api/pull", Call::managed},
        {"/api/push", Call::managed},
        {"/api/create", Call::managed},
        {"/api/copy", Call::managed},
        {"/api/delete", Call::managed},
        {"/api/blobs", Call::managed},
        {"/api/blobs/", Call::managed},
    }};
    for (const auto& [name, call] : kCalls) {
        if (path == name || (name == "/api/blobs/" && path.starts_with(name))) return call;
    }
    return Call::unknown;
}

std::string without_latest(std::string name) {
    constexpr std::string_view kLatest = ":latest";
    if (name.ends_with(kLatest)) name.resize(name.size() - kLatest.size());
    return name;
}

std::string_view method_of(Call call) {
    switch (call) {
        case Call::tags:
        case Call::ps:
        case Call::version:
            return "GET";
        case Call::unknown:
            return "";
        default:
            return "POST";
    }
}

http::response<http::string_body> error_response(http::status status, std::string_view message,
                                                 bool keep_alive) {
    http::response<http::string_body> response{status, 11};
    response.set(http::field::content_type, "application/json; charset=utf-8");
    response.set(http::field::server, "ensemble-worker");
    response.body() = dump(json{{"error", message}});
    response.keep_alive(keep_alive);
    response.prepare_payload();
    return response;
}

http::response<http::string_body> error_response(const ApiError& error, bool keep_alive) {
    auto response = error_response(error.status, error.message, keep_alive);
    if (error.retry_after_seconds > 0)
        response.set(http::field::retry_after, std::to_string(error.retry_after_seconds));
    return response;
}

std::optional<http::response<http::string_body>> refusal(
    const http::request<http::string_body>& request, std::string_view api_key) {
    const bool keep_alive = request.keep_alive();
    const std::string_view target = sv(request.target());
    const auto path = target.substr(0, target.find('?'));
    const auto call = call_of(path);
    if (call == Call::unknown) {
        return error_response(http::status::not_found,
                              "no route for '" + std::string(target) +
                                  "'; Ollama's API here is /api/chat, /api/generate, /api/embed, "
                                  "/api/tags, /api/show, /api/ps and /api/version",
                              keep_alive);
    }
    if (auto allowed = check_api_key(sv(request[http::field::authorization]), api_key); !allowed)
        return error_response(http::status::unauthorized, allowed.error().message, keep_alive);
    if (call == Call::managed) {
        return error_response(
            http::status::not_implemented,
            "models are managed by Ensemble's config, not through this API: add the model to the "
            "config, and load it ('ensemble load PORT MODEL') or give it 'on_demand: true' to "
            "have the front door load it when asked",
            keep_alive);
    }
    const auto method = method_of(call);
    const bool head = request.method() == http::verb::head && method == "GET";
    if (sv(request.method_string()) != method && !head) {
        auto response =
            error_response(http::status::method_not_allowed,
                           std::string(path) + " takes " + std::string(method), keep_alive);
        response.set(http::field::allow, std::string(method));
        return response;
    }
    return std::nullopt;
}

PortModel describe(ModelIdentity identity, const std::string& path) {
    PortModel model;
    model.identity = std::move(identity);
    const std::filesystem::path file = path;
    std::error_code ec;
    model.format = file.extension() == ".gguf"               ? "gguf"
                   : std::filesystem::is_directory(file, ec) ? "safetensors"
                                                             : "";
    if (std::filesystem::is_regular_file(file, ec)) {
        const auto size = std::filesystem::file_size(file, ec);
        model.file_bytes = ec ? 0 : size;  // (an error reads as the largest size)
    }
    return model;
}

std::string tags_body(const std::vector<PortModel>& models) {
    json entries = json::array();
    for (const auto& model : models)
        entries.push_back(model_entry(model));
    return dump(json{{"models", std::move(entries)}});
}

std::string show_body(const PortModel& model) {
    json info = json::object();
    if (model.context > 0) info["general.context_length"] = model.context;
    return dump(json{{"modelfile", ""},
                     {"parameters", ""},
                     {"template", ""},
                     {"details", details_of(model)},
                     {"model_info", info},
                     {"capabilities", model.tools ? json::array({"completion", "tools"})
                                                  : json::array({"completion"})},
                     {"modified_at", rfc3339_of(model.loaded_unix)}});
}

std::string ps_body(const std::vector<PortModel>& models) {
    json entries = json::array();
    for (const auto& model : models) {
        auto entry = model_entry(model);
        entry["size"] = model.memory_bytes;
        entry["size_vram"] = 0;
        // Loaded until unloaded or evicted, unless an idle on-demand load has a deadline.
        entry["expires_at"] =
            model.expires_unix > 0 ? rfc3339_of(model.expires_unix) : "2318-01-01T00:00:00Z";
        entry["context_length"] = model.context;
        entries.push_back(std::move(entry));
    }
    return dump(json{{"models", std::move(entries)}});
}

// (On a model port, a model asked to unload stays: the port serves it until it is unloaded from
// the config's side; the front door unloads a model it loaded on demand.)
std::string load_reply(Call call, const std::string& model, bool unload) {
    json reply = {{"model", model},
                  {"created_at", now_rfc3339()},
                  {"done", true},
                  {"done_reason", unload ? "unload" : "load"}};
    if (call == Call::chat) {
        reply["message"] = {{"role", "assistant"}, {"content", ""}};
    } else {
        reply["response"] = "";
    }
    return dump(reply);
}

bool loads_only(Call call, const json& request) {
    if (call == Call::chat) {
        const auto& messages = at(request, "messages");
        return messages.is_null() || (messages.is_array() && messages.empty());
    }
    if (call != Call::generate) return false;
    const auto& prompt = at(request, "prompt");
    const auto& images = at(request, "images");
    return (prompt.is_null() || prompt == "") &&
           (images.is_null() || (images.is_array() && images.empty()));
}

namespace {

// Go's time.ParseDuration, which Ollama reads keep_alive with: "[-+]?([0-9]*(\.[0-9]*)?unit)+"
// or "0"; units ns, us (µs, μs), ms, s, m, h. In seconds; nullopt: not a duration.
std::optional<double> go_duration_seconds(std::string_view text) {
    static constexpr std::size_t kLongest = 64;  // untrusted: bounded
    if (text.empty() || text.size() > kLongest) return std::nullopt;
    double sign = 1;
    if (text.front() == '-' || text.front() == '+') {
        sign = text.front() == '-' ? -1 : 1;
        text.remove_prefix(1);
    }
    if (text == "0") return 0.0;
    if (text.empty()) return std::nullopt;
    static constexpr std::array<std::pair<std::string_view, double>, 8> kUnits{{
        {"ns", 1e-9},
        {"us", 1e-6},
        {"\u00b5s", 1e-6},  // µs
        {"\u03bcs", 1e-6},  // μs
        {"ms", 1e-3},
        {"s", 1},
        {"m", 60},
        {"h", 3600},
    }};
    double total = 0;
    while (!text.empty()) {
        double value = 0;
        bool digits = false;
        std::size_t i = 0;
        for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, digits = true)
            value = value * 10 + (text[i] - '0');
        if (i < text.size() && text[i] == '.') {
            double scale = 0.1;
            for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, digits = true) {
                value += (text[i] - '0') * scale;
                scale /= 10;
            }
        }
        if (!digits) return std::nullopt;
        text.remove_prefix(i);
        const auto unit = std::find_if(kUnits.begin(), kUnits.end(),
                                       [&](const auto& u) { return text.starts_with(u.first); });
        if (unit == kUnits.end()) return std::nullopt;  // Go: "missing unit"
        total += value * unit->second;
        text.remove_prefix(unit->first.size());
    }
    return sign * total;
}

}  // namespace

Result<std::optional<std::int64_t>> keep_alive_seconds(const json& value) {
    if (value.is_null()) return std::optional<std::int64_t>();
    double seconds = 0;
    if (value.is_number()) {
        // Ollama: a negative number is for ever (-0.5 too), another is whole seconds.
        seconds = value.get<double>() < 0 ? -1 : std::trunc(value.get<double>());
    } else if (value.is_string()) {
        const auto& text = value.get_ref<const std::string&>();
        const auto parsed = go_duration_seconds(text);
        if (!parsed) {
            static constexpr std::size_t kShown = 64;  // of an untrusted string, in a message
            return bad("keep_alive '" + text.substr(0, kShown) +
                       (text.size() > kShown ? "..." : "") +
                       "' is not a duration: give seconds (300), or a duration such as \"5m\", "
                       "\"1h30m\" or \"0\"; a negative one keeps the model loaded");
        }
        seconds = *parsed;
    } else {
        return bad("keep_alive must be a number of seconds or a duration such as \"5m\"");
    }
    if (seconds < 0 || seconds > static_cast<double>(protocol::KeepAlive::kLongest))
        return std::optional<std::int64_t>(protocol::KeepAlive::kForever);
    return std::optional<std::int64_t>(static_cast<std::int64_t>(std::ceil(seconds)));
}

std::string version_body() {
    return dump(json{{"version", kOllamaApiVersion}});
}

std::string requested_name(std::string_view body) {
    auto parsed = parse_bounded_json(body);
    if (!parsed) return {};
    return at(*parsed, "model").is_string() ? text_at(*parsed, "model") : text_at(*parsed, "name");
}

Result<EngineRequest> to_engine(Call call, std::string_view body) {
    auto parsed = parse_bounded_json(body);
    if (!parsed) return bad("the request body is not valid JSON: " + parsed.error().message);
    const auto& request = *parsed;
    if (!request.is_object()) return bad("the request body must be a JSON object");
    EngineRequest out;
    out.model = text_at(request, "model");
    if (out.model.empty()) return bad("model is required");
    const auto& stream = at(request, "stream");
    out.stream =
        call != Call::embed && call != Call::embeddings && (stream.is_null() || stream == true);
    json engine = {{"model", without_latest(out.model)}};
    map_options(at(request, "options"), engine);
    const auto keep_alive = keep_alive_seconds(at(request, "keep_alive"));
    if (!keep_alive) return keep_alive.error();
    const bool unload = *keep_alive == 0;
    switch (call) {
        case Call::chat: {
            const auto& messages = at(request, "messages");
            if (loads_only(call, request)) {
                out.answered = load_reply(call, out.model, unload);
                return out;
            }
            auto translated = chat_messages(messages);
            if (!translated) return translated.error();
            engine["messages"] = *translated;
            const auto& tools = at(request, "tools");
            if (!tools.is_null() && !tools.is_array()) return bad("tools must be an array");
            if (tools.is_array() && !tools.empty()) engine["tools"] = tools;
            out.target = "/v1/chat/completions";
            break;
        }
        case Call::generate: {
            const auto& given = at(request, "prompt");
            if (!given.is_null() && !given.is_string()) return bad("prompt must be a string");
            const json prompt = given.is_string() ? given : json("");
            const auto& images = at(request, "images");
            if (loads_only(call, request)) {
                out.answered = load_reply(call, out.model, unload);
                return out;
            }
            if (const auto& suffix = at(request, "suffix"); !suffix.is_null() && suffix != "") {
                return bad(
                    "suffix (fill in the middle) is not supported here; use the engine's own "
                    "infill endpoint");
            }
            if (at(request, "raw") == true) {
                engine["prompt"] = prompt;
                out.target = "/v1/completions";
                break;
            }
            json messages = json::array();
            if (const auto& system = at(request, "system"); system.is_string() && system != "")
                messages.push_back({{"role", "system"}, {"content", system}});
            auto user = content_of({{"content", prompt}, {"images", images}});
            if (!user) return user.error();
            messages.push_back({{"role", "user"}, {"content", *user}});
            engine["messages"] = messages;
            out.target = "/v1/chat/completions";
            break;
        }
        case Call::embed:
        case Call::embeddings: {
            const std::string field = call == Call::embed ? "input" : "prompt";
            const auto& input = at(request, field);
            if (!input.is_string() && !input.is_array())
                return bad(field + " must be a string or an array of strings");
            engine["input"] = input;
            out.target = "/v1/embeddings";
            out.body = dump(engine);
            return out;
        }
        default:
            return bad("not a request for the engine");
    }
    if (auto format = map_format(request, engine); !format) return format.error();
    engine["stream"] = out.stream;
    if (out.stream) engine["stream_options"] = {{"include_usage", true}};
    out.body = dump(engine);
    return out;
}

Answer::Answer(Call call, std::string model, bool stream, Clock::time_point began)
    : call_(call), model_(std::move(model)), stream_(stream), began_(began) {}

void Answer::begin(http::response_header<>& header, bool event_stream) {
    // Called again when the engine is asked again (it died before answering): a fresh answer.
    ended_ = false;
    pending_.clear();
    tool_calls_.clear();
    done_reason_ = "stop";
    usage_ = nullptr;
    timings_ = nullptr;
    event_stream_ = event_stream;
    failed_ = header.result_int() >= 400;
    header.erase(http::field::content_length);
    header.set(http::field::content_type, stream_ && !failed_ && event_stream
                                              ? "application/x-ndjson"
                                              : "application/json; charset=utf-8");
}

std::string Answer::line(json object) const {
    return dump(object) + (stream_ ? "\n" : "");
}

json Answer::done_line() const {
    const auto total =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - began_).count();
    const auto ms_to_ns = [](const json& ms) {
        return ms.is_number() && ms.get<double>() >= 0 && ms.get<double>() < 1e12
                   ? static_cast<long long>(ms.get<double>() * 1e6)
                   : 0LL;
    };
    const auto count = [&](const char* usage_name, const char* timings_name) -> long long {
        if (const auto& n = at(usage_, usage_name); n.is_number_integer()) return n;
        if (const auto& n = at(timings_, timings_name); n.is_number_integer()) return n;
        return 0;
    };
    return {{"model", model_},
            {"created_at", now_rfc3339()},
            {"done", true},
            {"done_reason", done_reason_},
            {"total_duration", total},
            {"load_duration", 0},
            {"prompt_eval_count", count("prompt_tokens", "prompt_n")},
            {"prompt_eval_duration", ms_to_ns(at(timings_, "prompt_ms"))},
            {"eval_count", count("completion_tokens", "predicted_n")},
            {"eval_duration", ms_to_ns(at(timings_, "predicted_ms"))}};
}

std::string Answer::feed(std::string_view bytes) {
    if (ended_) return {};
    if (pending_.size() + bytes.size() > kMaxAnswerBytes) {
        ended_ = true;
        return line(
            {{"error", "the engine's answer is larger than the " +
                           std::to_string(kMaxAnswerBytes >> 20) + " MiB this port translates"}});
    }
    pending_.append(bytes);
    if (!event_stream_ || failed_) return {};  // one JSON body: translated whole at the end
    std::string out;
    for (;;) {
        // Events end at a blank line ("\n\n", or "\r\n\r\n").
        auto end = pending_.find("\n\n");
        std::size_t gap = 2;
        if (const auto crlf = pending_.find("\r\n\r\n"); crlf < end) {
            end = crlf;
            gap = 4;
        }
        if (end == std::string::npos) break;
        const std::string event = pending_.substr(0, end);
        pending_.erase(0, end + gap);
        // llama-server reports a failure mid-stream as an `error:` field (others as
        // `event: error`): the answer ends with it, not with `done`.
        std::string_view rest = event;
        bool error_event = false;
        while (!rest.empty() && !ended_) {
            const auto eol = rest.find('\n');
            auto field = rest.substr(0, eol);
            rest.remove_prefix(eol == std::string_view::npos ? rest.size() : eol + 1);
            if (field.ends_with('\r')) field.remove_suffix(1);
            const auto colon = field.find(':');
            const auto name = field.substr(0, colon);
            auto value =
                colon == std::string_view::npos ? std::string_view() : field.substr(colon + 1);
            if (value.starts_with(' ')) value.remove_prefix(1);
            if (name == "event" && value == "error") error_event = true;
            if (name == "error" || (name == "data" && error_event)) {
                out += engine_error(value);
            } else if (name == "data") {
                out += translate_event(value);
            }
        }
        if (ended_) break;
    }
    return out;
}

std::string Answer::engine_error(std::string_view data) {
    ended_ = true;
    auto parsed = parse_bounded_json(data);
    if (!parsed) return line({{"error", std::string(data.substr(0, 1000))}});
    const auto& error = at(*parsed, "error");
    return line({{"error", message_of(error.is_null() ? *parsed : error)}});
}

std::string Answer::translate_event(std::string_view data) {
    if (data == "[DONE]") return {};
    auto parsed = parse_bounded_json(data);
    if (!parsed || !parsed->is_object()) return {};  // not an OpenAI chunk: nothing to say
    const auto& chunk = *parsed;
    if (const auto& error = at(chunk, "error"); !error.is_null()) {
        ended_ = true;
        return line({{"error", message_of(error)}});
    }
    if (const auto& usage = at(chunk, "usage"); usage.is_object()) usage_ = usage;
    if (const auto& timings = at(chunk, "timings"); timings.is_object()) timings_ = timings;
    const auto& choices = at(chunk, "choices");
    if (!choices.is_array() || choices.empty()) return {};
    const auto& choice = choices[0];
    if (const auto& reason = at(choice, "finish_reason"); reason.is_string())
        done_reason_ = reason == "length" ? "length" : "stop";
    const auto& delta = at(choice, "delta");
    std::string text = text_at(delta, "content");
    const auto thinking = text_at(delta, "reasoning_content");
    if (const auto& calls = at(delta, "tool_calls"); calls.is_array()) {
        constexpr std::size_t kMaxToolCalls = 128;
        for (const auto& call : calls) {
            const auto& index = at(call, "index");
            const int i = index.is_number_integer() ? index.get<int>() : 0;
            if (!tool_calls_.contains(i) && tool_calls_.size() >= kMaxToolCalls) continue;
            auto& mine = tool_calls_[i];
            mine.name += text_at(at(call, "function"), "name");
            mine.arguments += text_at(at(call, "function"), "arguments");
        }
    }
    if (at(choice, "text").is_string()) text = text_at(choice, "text");  // /v1/completions
    if (text.empty() && thinking.empty()) return {};
    json out = {{"model", model_}, {"created_at", now_rfc3339()}, {"done", false}};
    if (call_ == Call::chat) {
        out["message"] = {{"role", "assistant"}, {"content", text}};
        if (!thinking.empty()) out["message"]["thinking"] = thinking;
    } else {
        out["response"] = text;
        if (!thinking.empty()) out["thinking"] = thinking;
    }
    return line(std::move(out));
}

std::string Answer::whole_answer() {
    auto parsed = parse_bounded_json(pending_);
    if (failed_ || !parsed || !parsed->is_object()) {
        std::string message = "the engine answered with an error";
        if (parsed && !at(*parsed, "error").is_null()) {
            message = message_of(at(*parsed, "error"));
        } else if (!parsed) {
            message = "the engine's answer is not JSON";
        }
        return line({{"error", message}});
    }
    const auto& answer = *parsed;
    if (call_ == Call::embed || call_ == Call::embeddings) {
        json vectors = json::array();
        if (const auto& data = at(answer, "data"); data.is_array()) {
            for (const auto& item : data)
                vectors.push_back(at(item, "embedding"));
        }
        if (call_ == Call::embeddings)
            return dump(json{{"embedding", vectors.empty() ? json::array() : vectors[0]}});
        usage_ = at(answer, "usage");
        const auto done = done_line();
        return dump(json{{"model", model_},
                         {"embeddings", vectors},
                         {"total_duration", done["total_duration"]},
                         {"load_duration", 0},
                         {"prompt_eval_count", done["prompt_eval_count"]}});
    }
    usage_ = at(answer, "usage");
    timings_ = at(answer, "timings");
    const auto& choices = at(answer, "choices");
    const json choice = choices.is_array() && !choices.empty() ? choices[0] : json::object();
    if (const auto& reason = at(choice, "finish_reason"); reason.is_string())
        done_reason_ = reason == "length" ? "length" : "stop";
    auto out = done_line();
    const auto& message = at(choice, "message");
    std::string text = text_at(message, "content");
    if (at(choice, "text").is_string()) text = text_at(choice, "text");
    const auto thinking = text_at(message, "reasoning_content");
    if (call_ != Call::chat) {
        out["response"] = text;
        if (!thinking.empty()) out["thinking"] = thinking;
    } else {
        out["message"] = {{"role", "assistant"}, {"content", text}};
        if (!thinking.empty()) out["message"]["thinking"] = thinking;
        if (const auto& calls = at(message, "tool_calls"); calls.is_array()) {
            json ollama_calls = json::array();
            for (const auto& call : calls) {
                const auto& function = at(call, "function");
                ollama_calls.push_back(
                    {{"function",
                      {{"name", text_at(function, "name")},
                       {"arguments", arguments_object(text_at(function, "arguments"))}}}});
            }
            out["message"]["tool_calls"] = ollama_calls;
        }
    }
    return dump(out);
}

std::string Answer::finish() {
    if (ended_) return {};
    ended_ = true;
    if (!event_stream_ || failed_) return whole_answer();
    std::string out;
    if (!tool_calls_.empty()) {
        json calls = json::array();
        for (const auto& [index, call] : tool_calls_) {
            calls.push_back(
                {{"function",
                  {{"name", call.name}, {"arguments", arguments_object(call.arguments)}}}});
        }
        out += line({{"model", model_},
                     {"created_at", now_rfc3339()},
                     {"message", {{"role", "assistant"}, {"content", ""}, {"tool_calls", calls}}},
                     {"done", false}});
    }
    auto done = done_line();
    if (call_ == Call::chat) {
        done["message"] = {{"role", "assistant"}, {"content", ""}};
    } else {
        done["response"] = "";
    }
    return out + line(std::move(done));
}

http::response<http::string_body> Answer::error_response(const ApiError& error,
                                                         bool keep_alive) const {
    return ollama::error_response(error, keep_alive);
}

std::string Answer::cut(const ApiError& error) {
    if (ended_) return {};
    ended_ = true;
    return line({{"error", error.message}});
}

}  // namespace ensemble::ollama
