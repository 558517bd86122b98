#include "worker/http_front.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "os/listening_socket.h"
#include "os/port_holder.h"
#include "os/process_memory.h"
#include "protocol/bounded_json.h"
#include "protocol/prometheus_text.h"
#include "worker/cors.h"
#include "worker/immediate_io.h"
#include "worker/ollama_api.h"

namespace ensemble {

namespace {

ApiError not_found_path(std::string_view target) {
    return {http::status::not_found, "invalid_request_error", "unknown_path",
            "no route for '" + std::string(target) +
                "'; this worker serves the OpenAI API under /v1/, GET /health and GET /metrics"};
}

http::response<http::string_body> method_not_allowed(std::string message, const char* allow,
                                                     bool keep_alive) {
    auto response =
        make_error_response(ApiError{http::status::method_not_allowed, "invalid_request_error",
                                     "method_not_allowed", std::move(message)},
                            keep_alive);
    response.set(http::field::allow, allow);
    return response;
}

// The methods the OpenAI API and engines' own routes use (OPTIONS: a browser's CORS preflight,
// which llama-server answers). Others (TRACE, which echoes a request's credentials; CONNECT;
// WebDAV's) are refused here rather than handed to an engine that was never meant to see them.
constexpr const char* kForwardedMethods = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
bool forwarded(http::verb method) {
    switch (method) {
        case http::verb::get:
        case http::verb::post:
        case http::verb::put:
        case http::verb::patch:
        case http::verb::delete_:
        case http::verb::options:
            return true;
        default:
            return false;
    }
}

// Clients that went away before their answer began are counted under nginx's code for it.
constexpr unsigned kClientClosedRequest = 499;

}  // namespace

HttpFront::HttpFront(asio::io_context& io, FrontConfig config, ModelIdentity model,
                     EngineRunner& engine, EngineProxy& proxy)
    : HttpListener(io, config),
      config_(std::move(config)),
      model_(std::move(model)),
      engine_(engine),
      proxy_(proxy),
      started_unix_(static_cast<long>(std::time(nullptr))) {}

std::optional<ApiError> HttpFront::admission_error() const {
    // Draining, a request that arrives is still answered (its connection was accepted before,
    // and the engine runs until the drain ends); its connection is closed after it.
    const auto state = engine_.state();
    if (state == EngineState::ready) return std::nullopt;
    if (!engine_.ever_ready()) {
        return ApiError{http::status::service_unavailable, "server_error", "model_loading",
                        "the model '" + model_.handle + "' is still loading; retry shortly", 2};
    }
    if (engine_.waiting() >= config_.queue_max) {
        return ApiError{http::status::service_unavailable, "server_error", "queue_full",
                        "the engine is restarting and " + std::to_string(config_.queue_max) +
                            " requests are already waiting; retry shortly",
                        5};
    }
    return std::nullopt;  // restarting: the proxy queues it until the engine is back
}

http::response<http::string_body> HttpFront::health_response(bool keep_alive) const {
    const auto state = engine_.state();
    const bool ok = state == EngineState::ready && !draining();
    nlohmann::json body = {{"status", ok ? "ok" : (draining() ? "draining" : to_string(state))},
                           {"model", model_.handle},
                           {"engine_restarts", engine_.restarts()}};
    if (!engine_.last_exit().empty()) body["engine_last_exit"] = engine_.last_exit();
    auto res = make_json_response(ok ? http::status::ok : http::status::service_unavailable,
                                  body.dump(), keep_alive);
    if (!ok) res.set(http::field::retry_after, "2");
    return res;
}

std::optional<http::response<http::string_body>> HttpFront::answer_locally(
    http::request<http::string_body>& request, const PlainBlocks& plain) const {
    const bool keep_alive = request.keep_alive();
    const std::string_view target = sv(request.target());
    const auto path = target.substr(0, target.find('?'));
    if (path == "/health") return health_response(keep_alive);
    if (path == "/metrics") {
        if (!config_.metrics_without_key) {
            if (auto allowed =
                    check_api_key(sv(request[http::field::authorization]), config_.api_key);
                !allowed) {
                return make_error_response(api_error(allowed.error()), keep_alive);
            }
        }
        if (request.method() != http::verb::get && request.method() != http::verb::head) {
            return method_not_allowed("/metrics answers GET and HEAD only", "GET, HEAD",
                                      keep_alive);
        }
        return metrics_response(keep_alive);
    }
    if (path == "/" &&
        (request.method() == http::verb::get || request.method() == http::verb::head)) {
        // What `ollama serve` answers: Ollama's clients probe it before using /api/.
        http::response<http::string_body> running{http::status::ok, 11};
        running.set(http::field::content_type, "text/plain; charset=utf-8");
        running.set(http::field::server, "ensemble-worker");
        running.body() = ollama::kRunningText;
        running.keep_alive(keep_alive);
        running.prepare_payload();
        return running;
    }
    if (!path.starts_with("/v1/")) return make_error_response(not_found_path(target), keep_alive);
    // A browser's CORS preflight never carries Authorization (llama-server skips its key for
    // OPTIONS). With a key, the worker, which holds it in the engine's stead, answers the
    // preflight itself: a request without the key reaches nothing behind it (the engine's
    // queue, the port's last use). Without one, the engine answers, with its own policy.
    if (cors::is_preflight(request) && !config_.api_key.empty())
        return cors::preflight_answer(request, kForwardedMethods, keep_alive);
    if (auto allowed = check_api_key(sv(request[http::field::authorization]), config_.api_key);
        !allowed) {
        return make_error_response(api_error(allowed.error()), keep_alive);
    }
    const bool head = request.method() == http::verb::head;
    if (path == "/v1/models" && (request.method() == http::verb::get || head)) {
        return make_json_response(http::status::ok, models_list_body(model_, started_unix_),
                                  keep_alive);
    }
    if (head) {  // an engine waits for a body a HEAD never has: answered here
        return method_not_allowed("HEAD is answered for /health, /metrics and /v1/models",
                                  kForwardedMethods, keep_alive);
    }
    if (!forwarded(request.method())) {
        return method_not_allowed(std::string(sv(request.method_string())) +
                                      " is not forwarded to the engine: the API uses " +
                                      kForwardedMethods,
                                  kForwardedMethods, keep_alive);
    }
    if (!request.body().empty()) {
        auto pinned = pin_model(std::move(request.body()), model_, &plain);
        if (!pinned) return make_error_response(api_error(pinned.error()), keep_alive);
        request.body() = std::move(pinned).value();
    }
    if (auto unavailable = admission_error()) return make_error_response(*unavailable, keep_alive);
    return std::nullopt;
}

awaitable<bool> HttpFront::handle(tcp_stream& stream, http::request<http::string_body>& request,
                                  const PlainBlocks& plain) {
    RequestTrace trace;  // the request has just been read
    if (sv(request.target()).starts_with("/api/")) {
        const bool keep_alive = co_await handle_ollama(stream, request, trace);
        co_return keep_alive;
    }
    // No temporaries inside co_await expressions: GCC 12 may destroy them twice.
    auto local = answer_locally(request, plain);
    if (local) {
        cors::allow_origin(request, *local);  // the engine's answers carry its own
        const bool keep_alive = co_await reply(stream, *local, request.method());
        metrics_.answered(sv(request.target()), local->result_int());
        co_return keep_alive;
    }
    // Draining, this is the connection's last answer: it says so (Connection: close).
    if (draining()) request.keep_alive(false);
    const bool keep_alive = co_await proxy_.forward(stream, request, trace);
    if (trace.status == 0) {
        metrics_.answered(sv(request.target()), kClientClosedRequest);
    } else {
        metrics_.answered(sv(request.target()), trace.status);
        metrics_.proxied(RequestTrace::Clock::now() - trace.began, trace.first_token,
                         trace.prompt_tokens);
    }
    // What the answer told the client: one told "keep-alive" may already be sending its next
    // request, which a drain still answers (HttpListener::drain).
    co_return keep_alive;
}

std::uint64_t HttpFront::memory_now() const {
    const auto now = std::chrono::steady_clock::now();
    if (!memory_ || now - memory_->at >= std::chrono::seconds(1)) {
        MemoryReading reading{now, process_footprint(::getpid()).value_or(0), 0};
        if (const auto pid = engine_.pid()) reading.engine = process_footprint(*pid).value_or(0);
        memory_ = reading;
    }
    return memory_->worker + memory_->engine;
}

std::optional<http::response<http::string_body>> HttpFront::answer_ollama_locally(
    const http::request<http::string_body>& request) const {
    const bool keep_alive = request.keep_alive();
    const std::string_view target = sv(request.target());
    const auto call = ollama::call_of(target.substr(0, target.find('?')));
    if (auto refused = ollama::refusal(request, config_.api_key)) return refused;
    auto model = ollama::describe(model_, config_.model_path);
    model.loaded_unix = started_unix_;
    model.context = config_.context;
    model.tools = config_.tools;
    switch (call) {
        case ollama::Call::version:
            return make_json_response(http::status::ok, ollama::version_body(), keep_alive);
        case ollama::Call::tags:
            return make_json_response(http::status::ok, ollama::tags_body({model}), keep_alive);
        case ollama::Call::ps:
            model.memory_bytes = memory_now();
            return make_json_response(http::status::ok, ollama::ps_body({model}), keep_alive);
        case ollama::Call::show: {
            const auto name = ollama::requested_name(request.body());
            const auto base = ollama::without_latest(name);
            if (!model_.answers_to(name) && !model_.answers_to(base)) {
                return ollama::error_response(http::status::not_found,
                                              "model '" + name +
                                                  "' is not served on this port; "
                                                  "it serves '" +
                                                  model_.handle + "'",
                                              keep_alive);
            }
            return make_json_response(http::status::ok, ollama::show_body(model), keep_alive);
        }
        default:
            return std::nullopt;  // for the engine
    }
}

awaitable<bool> HttpFront::handle_ollama(tcp_stream& stream,
                                         http::request<http::string_body>& request,
                                         RequestTrace& trace) {
    const std::string path(sv(request.target()).substr(0, sv(request.target()).find('?')));
    const bool keep_alive = request.keep_alive() && !draining();
    auto local = answer_ollama_locally(request);
    std::optional<ollama::EngineRequest> engine_request;
    if (!local) {
        auto translated = ollama::to_engine(ollama::call_of(path), request.body());
        if (!translated) {
            local = ollama::error_response(http::status::bad_request, translated.error().message,
                                           keep_alive);
        } else if (translated->answered) {
            local = make_json_response(http::status::ok, *translated->answered, keep_alive);
        } else if (auto pinned = pin_model(std::move(translated->body), model_); !pinned) {
            local = ollama::error_response(api_error(pinned.error()).status, pinned.error().message,
                                           keep_alive);
        } else if (auto unavailable = admission_error()) {
            local = ollama::error_response(*unavailable, keep_alive);
        } else {
            translated->body = std::move(pinned).value();
            engine_request = std::move(translated).value();
        }
    }
    if (local) {
        const bool kept = co_await reply(stream, *local, request.method());
        metrics_.answered(path, local->result_int());
        co_return kept;
    }
    request.method(http::verb::post);
    request.target(engine_request->target);
    request.erase(http::field::accept_encoding);  // the answer is read, so never compressed
    request.set(http::field::content_type, "application/json");
    request.body() = std::move(engine_request->body);
    if (draining()) request.keep_alive(false);
    ollama::Answer answer(ollama::call_of(path), engine_request->model, engine_request->stream,
                          trace.began);
    trace.filter = &answer;
    const bool kept = co_await proxy_.forward(stream, request, trace);
    metrics_.answered(path, trace.status == 0 ? kClientClosedRequest : trace.status);
    if (trace.status != 0) {
        metrics_.proxied(RequestTrace::Clock::now() - trace.began, trace.first_token,
                         trace.prompt_tokens);
    }
    co_return kept;  // as the answer said (see handle)
}

http::response<http::string_body> HttpFront::metrics_response(bool keep_alive) const {
    memory_now();
    WorkerGauges gauges;
    gauges.model = model_.handle;
    gauges.engine_state = to_string(engine_.state());
    gauges.draining = draining();
    gauges.in_flight = in_flight();
    gauges.queued = engine_.waiting();
    gauges.engine_restarts = engine_.restarts();
    gauges.generated_tokens = proxy_.stats().tokens;
    gauges.worker_memory_bytes = memory_->worker;
    gauges.engine_memory_bytes = memory_->engine;
    http::response<http::string_body> response{http::status::ok, 11};
    response.set(http::field::content_type, protocol::kPrometheusContentType);
    response.set(http::field::server, "ensemble-worker");
    response.body() = metrics_.render(gauges);
    response.keep_alive(keep_alive);
    response.prepare_payload();
    return response;
}

}  // namespace ensemble
