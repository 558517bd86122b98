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
#include "worker/immediate_io.h"
#include "worker/ollama_api.h"

namespace ensemble {

namespace {

constexpr std::uint32_t kHeaderLimit = 64 * 1024;
// What a connection reads into while it waits for a request, and the most one read of a body
// takes (beast reads at most 64 KiB at a time whatever the buffer).
constexpr std::size_t kIdleRead = 4096;
constexpr std::uint64_t kLargeRead = 64 * 1024;

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

// Clients that went away before their answer began are counted under nginx's code for it.
constexpr unsigned kClientClosedRequest = 499;

// A HEAD request gets the headers a GET would get, without the body: Beast's serializer does not
// know the request's method, and a body after them would be read as the next answer.
void drop_body_for_head(const http::request<http::string_body>& request,
                        http::response<http::string_body>& response) {
    if (request.method() != http::verb::head) return;
    const auto length = response.body().size();
    response.body().clear();
    response.content_length(length);
}

}  // namespace

HttpFront::HttpFront(asio::io_context& io, FrontConfig config, ModelIdentity model,
                     EngineRunner& engine, EngineProxy& proxy)
    : io_(io),
      config_(std::move(config)),
      model_(std::move(model)),
      engine_(engine),
      proxy_(proxy),
      acceptor_(io),
      started_unix_(static_cast<long>(std::time(nullptr))) {}

Status HttpFront::listen() {
    boost::system::error_code ec;
    if (config_.listen_fd) {
        const int fd = *config_.listen_fd;
        if (auto ok = check_listening_socket(fd, config_.port, config_.host); !ok)
            return ok.error();
        sockaddr_storage address{};
        socklen_t length = sizeof address;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
        acceptor_.assign(address.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
        if (ec) {
            return Error{"no_listening_socket", "cannot accept on the passed socket of port " +
                                                    std::to_string(config_.port) + ": " +
                                                    ec.message()};
        }
        return Ok{};
    }
    const auto address = asio::ip::make_address(config_.host, ec);
    if (ec) return Error{"bad_host", "'" + config_.host + "' is not an IP address to bind"};
    const tcp::endpoint endpoint{address, config_.port};
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (ec == asio::error::address_in_use) {
        return Error{"port_in_use", "port " + std::to_string(config_.port) + " on " + config_.host +
                                        " is already in use by another process (" +
                                        port_holder_hint(config_.port) +
                                        "); stop it or choose another port"};
    }
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        return Error{"bind_failed", "cannot listen on " + config_.host + ":" +
                                        std::to_string(config_.port) + ": " + ec.message()};
    }
    return Ok{};
}

unsigned short HttpFront::bound_port() const {
    boost::system::error_code ec;
    const auto endpoint = acceptor_.local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

void HttpFront::start_accepting() {
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

awaitable<void> HttpFront::accept_loop() {
    while (!draining_) {
        boost::system::error_code ec;
        auto socket = co_await acceptor_.async_accept(on_error(ec));
        if (ec == asio::error::operation_aborted || draining_) break;
        if (ec) {
            // Out of descriptors or similar: back off briefly instead of spinning.
            spdlog::warn("front: accept failed: {}", ec.message());
            asio::steady_timer pause(io_, std::chrono::milliseconds(50));
            co_await pause.async_wait(on_error(ec));
            continue;
        }
        socket.set_option(tcp::no_delay(true), ec);
        if (sessions_.size() >= config_.max_connections) {
            asio::co_spawn(io_, refuse_connection(std::move(socket)), asio::detached);
            continue;
        }
        asio::co_spawn(io_, serve(std::move(socket)), asio::detached);
    }
}

awaitable<void> HttpFront::refuse_connection(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    stream.expires_after(std::chrono::seconds(5));
    auto response = make_error_response(
        ApiError{http::status::service_unavailable, "server_error", "too_many_connections",
                 "this port already serves " + std::to_string(config_.max_connections) +
                     " connections; retry shortly, or reuse connections (keep-alive)",
                 1},
        false);
    co_await reply(stream, response);
    metrics_.answered("", static_cast<unsigned>(http::status::service_unavailable));
    // Closing with the request unread would reset the connection, and the client might never
    // see the 503: finish sending, then read (and drop) what it sent, briefly and boundedly.
    boost::system::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream.expires_after(std::chrono::milliseconds(250));
    std::array<char, 4096> sink{};
    for (std::size_t dropped = 0; dropped < 64 * 1024;) {
        const auto n = co_await stream.async_read_some(asio::buffer(sink), on_error(ec));
        if (ec) break;
        dropped += n;
    }
}

awaitable<void> HttpFront::serve(tcp::socket socket) {
    boost::system::error_code mode_ec;
    socket.non_blocking(true, mode_ec);  // for write_now; if refused, writes wait their turn
    beast::tcp_stream stream(std::move(socket));
    auto session = sessions_.insert(sessions_.end(), Session{&stream, true});
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(config_.max_body_bytes);
        parser.header_limit(kHeaderLimit);
        boost::system::error_code ec;
        session->idle = true;
        if (draining_ && !session->fresh) break;
        if (buffer.size() == 0) {  // waiting for the next request to begin
            stream.expires_after(config_.idle_timeout);
            const auto n = co_await stream.async_read_some(buffer.prepare(kIdleRead), on_error(ec));
            if (ec) break;
            buffer.commit(n);
        }
        session->idle = false;
        // A small request is usually whole in the buffer now: parsed in place.
        parser.eager(true);
        parse_buffered(parser, buffer, ec);
        if (!ec && !parser.is_header_done()) {
            stream.expires_after(config_.header_timeout);
            co_await http::async_read_header(stream, buffer, parser, on_error(ec));
        }
        if (!ec && !parser.is_done()) {
            // Beast reads as much as the buffer's free capacity (4 KiB here), at most 64 KiB: a
            // large body is read 64 KiB at a time, not in 256 reads per MiB.
            const auto free = buffer.capacity() - buffer.size();
            if (const auto length = parser.content_length(); length && *length > free)
                buffer.reserve(buffer.size() + std::min<std::uint64_t>(*length, kLargeRead));
            stream.expires_after(config_.body_timeout);
            co_await http::async_read(stream, buffer, parser, on_error(ec));
        }
        if (ec) {
            // (The target is known once the request line is read, before the headers are.)
            const std::string target(sv(parser.get().target()));
            co_await reject_unreadable(stream, ec, target);
            break;
        }
        auto request = parser.release();
        // The body was moved out: an idle keep-alive connection holds 4 KiB, not its largest.
        if (buffer.capacity() > kIdleRead) buffer.shrink_to_fit();
        stream.expires_never();
        ++in_flight_;
        session->fresh = false;
        bool keep_alive = false;
        try {
            keep_alive = co_await handle(stream, request);
        } catch (const std::exception& e) {
            // A programming error: this request is lost, not the port's count of connections.
            spdlog::error("front: answering {} failed: {}; closing its connection",
                          sv(request.target()), e.what());
        }
        --in_flight_;
        if (!keep_alive) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    sessions_.erase(session);
}

awaitable<void> HttpFront::reject_unreadable(beast::tcp_stream& stream,
                                             boost::system::error_code ec,
                                             std::string_view target) {
    std::optional<ApiError> error;
    if (ec == http::error::body_limit) {
        error =
            ApiError{http::status::payload_too_large, "invalid_request_error", "request_too_large",
                     "the request body is larger than this port's limit of " +
                         std::to_string(config_.max_body_bytes) + " bytes"};
    } else if (ec == http::error::header_limit) {
        error = ApiError{http::status::request_header_fields_too_large, "invalid_request_error",
                         "headers_too_large", "the request headers exceed 64 KiB"};
    } else if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
        error = ApiError{http::status::bad_request, "invalid_request_error", "bad_http",
                         "malformed HTTP request: " + ec.message()};
    }
    if (!error) co_return;  // the client closed or timed out: nobody to answer
    auto response = target.starts_with("/api/") ? ollama::error_response(*error, false)
                                                : make_error_response(*error, false);
    co_await reply(stream, response);
    metrics_.answered(target, response.result_int());
}

awaitable<bool> HttpFront::reply(beast::tcp_stream& stream,
                                 http::response<http::string_body>& response) {
    boost::system::error_code ec;
    const bool keep_alive = response.keep_alive() && !draining_;
    response.keep_alive(keep_alive);
    http::response_serializer<http::string_body> serializer{response};
    co_await write_now(stream, serializer, ec);
    co_return keep_alive && !ec;
}

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
    const bool ok = state == EngineState::ready && !draining_;
    nlohmann::json body = {{"status", ok ? "ok" : (draining_ ? "draining" : to_string(state))},
                           {"model", model_.handle},
                           {"engine_restarts", engine_.restarts()}};
    if (!engine_.last_exit().empty()) body["engine_last_exit"] = engine_.last_exit();
    auto res = make_json_response(ok ? http::status::ok : http::status::service_unavailable,
                                  body.dump(), keep_alive);
    if (!ok) res.set(http::field::retry_after, "2");
    return res;
}

std::optional<http::response<http::string_body>> HttpFront::answer_locally(
    http::request<http::string_body>& request) const {
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
                                  "GET, POST", keep_alive);
    }
    if (!request.body().empty()) {
        auto pinned = pin_model(request.body(), model_);
        if (!pinned) return make_error_response(api_error(pinned.error()), keep_alive);
        request.body() = std::move(pinned).value();
    }
    if (auto unavailable = admission_error()) return make_error_response(*unavailable, keep_alive);
    return std::nullopt;
}

awaitable<bool> HttpFront::handle(beast::tcp_stream& stream,
                                  http::request<http::string_body>& request) {
    RequestTrace trace;  // the request has just been read
    if (sv(request.target()).starts_with("/api/")) {
        const bool keep_alive = co_await handle_ollama(stream, request, trace);
        co_return keep_alive;
    }
    // No temporaries inside co_await expressions: GCC 12 may destroy them twice.
    auto local = answer_locally(request);
    if (local) {
        drop_body_for_head(request, *local);
        const bool keep_alive = co_await reply(stream, *local);
        metrics_.answered(sv(request.target()), local->result_int());
        co_return keep_alive;
    }
    // Draining, this is the connection's last answer: it says so (Connection: close).
    if (draining_) request.keep_alive(false);
    const bool keep_alive = co_await proxy_.forward(stream, request, trace);
    if (trace.status == 0) {
        metrics_.answered(sv(request.target()), kClientClosedRequest);
    } else {
        metrics_.answered(sv(request.target()), trace.status);
        metrics_.proxied(RequestTrace::Clock::now() - trace.began, trace.first_token,
                         trace.prompt_tokens);
    }
    co_return keep_alive && !draining_;
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
    if (call == ollama::Call::unknown) {
        return ollama::error_response(http::status::not_found,
                                      "no route for '" + std::string(target) +
                                          "'; this port serves Ollama's /api/chat, /api/generate, "
                                          "/api/embed, /api/tags, /api/show, /api/ps and "
                                          "/api/version",
                                      keep_alive);
    }
    if (auto allowed = check_api_key(sv(request[http::field::authorization]), config_.api_key);
        !allowed) {
        return ollama::error_response(http::status::unauthorized, allowed.error().message,
                                      keep_alive);
    }
    if (call == ollama::Call::managed) {
        return ollama::error_response(
            http::status::not_implemented,
            "models are managed by Ensemble's config, not through this API: add the model to "
            "the config and load it ('ensemble load PORT MODEL')",
            keep_alive);
    }
    const auto method = ollama::method_of(call);
    const bool head = request.method() == http::verb::head && method == "GET";
    if (sv(request.method_string()) != method && !head) {
        auto response = ollama::error_response(
            http::status::method_not_allowed,
            std::string(target.substr(0, target.find('?'))) + " takes " + std::string(method),
            keep_alive);
        response.set(http::field::allow, std::string(method));
        return response;
    }
    ollama::PortModel model;
    model.identity = model_;
    const std::filesystem::path path = config_.model_path;
    std::error_code ec;
    model.format = path.extension() == ".gguf"               ? "gguf"
                   : std::filesystem::is_directory(path, ec) ? "safetensors"
                                                             : "";
    if (std::filesystem::is_regular_file(path, ec)) {
        const auto size = std::filesystem::file_size(path, ec);
        model.file_bytes = ec ? 0 : size;  // (an error reads as the largest size)
    }
    model.loaded_unix = started_unix_;
    model.context = config_.context;
    model.tools = config_.tools;
    switch (call) {
        case ollama::Call::version:
            return make_json_response(http::status::ok, ollama::version_body(), keep_alive);
        case ollama::Call::tags:
            return make_json_response(http::status::ok, ollama::tags_body(model), keep_alive);
        case ollama::Call::ps:
            model.memory_bytes = memory_now();
            return make_json_response(http::status::ok, ollama::ps_body(model), keep_alive);
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

awaitable<bool> HttpFront::handle_ollama(beast::tcp_stream& stream,
                                         http::request<http::string_body>& request,
                                         RequestTrace& trace) {
    const std::string path(sv(request.target()).substr(0, sv(request.target()).find('?')));
    const bool keep_alive = request.keep_alive() && !draining_;
    auto local = answer_ollama_locally(request);
    std::optional<ollama::EngineRequest> engine_request;
    if (!local) {
        auto translated = ollama::to_engine(ollama::call_of(path), request.body());
        if (!translated) {
            local = ollama::error_response(http::status::bad_request, translated.error().message,
                                           keep_alive);
        } else if (translated->answered) {
            local = make_json_response(http::status::ok, *translated->answered, keep_alive);
        } else if (auto pinned = pin_model(translated->body, model_); !pinned) {
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
        drop_body_for_head(request, *local);
        const bool kept = co_await reply(stream, *local);
        metrics_.answered(path, local->result_int());
        co_return kept;
    }
    request.method(http::verb::post);
    request.target(engine_request->target);
    request.erase(http::field::accept_encoding);  // the answer is read, so never compressed
    request.set(http::field::content_type, "application/json");
    request.body() = std::move(engine_request->body);
    if (draining_) request.keep_alive(false);
    ollama::Answer answer(ollama::call_of(path), engine_request->model, engine_request->stream,
                          trace.began);
    trace.filter = &answer;
    const bool kept = co_await proxy_.forward(stream, request, trace);
    metrics_.answered(path, trace.status == 0 ? kClientClosedRequest : trace.status);
    if (trace.status != 0) {
        metrics_.proxied(RequestTrace::Clock::now() - trace.began, trace.first_token,
                         trace.prompt_tokens);
    }
    co_return kept && !draining_;
}

http::response<http::string_body> HttpFront::metrics_response(bool keep_alive) const {
    memory_now();
    WorkerGauges gauges;
    gauges.model = model_.handle;
    gauges.engine_state = to_string(engine_.state());
    gauges.draining = draining_;
    gauges.in_flight = in_flight_;
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

awaitable<void> HttpFront::drain(std::chrono::milliseconds timeout) {
    draining_ = true;
    boost::system::error_code ec;
    acceptor_.close(ec);
    const auto began = std::chrono::steady_clock::now();
    const auto deadline = began + timeout;
    // A client that connected just before the drain has its request on the way: it is
    // waited for this long (one that connects and says nothing does not hold up the stop).
    const auto fresh_deadline = began + std::min(timeout, std::chrono::milliseconds(500));
    asio::steady_timer timer(io_);
    for (;;) {
        bool busy = in_flight_ > 0;
        bool fresh_waiting = false;
        for (auto& session : sessions_) {
            // Ends a keep-alive wait; a fresh connection's first request is still answered.
            if (session.idle && !session.fresh) session.stream->socket().cancel(ec);
            if (!session.idle) busy = true;  // reading a request (or answering one)
            if (session.idle && session.fresh) fresh_waiting = true;
        }
        const auto now = std::chrono::steady_clock::now();
        const bool fresh_done = !fresh_waiting || now >= fresh_deadline;
        if ((!busy && fresh_done) || now >= deadline) break;
        timer.expires_after(std::chrono::milliseconds(20));
        co_await timer.async_wait(on_error(ec));
    }
    if (in_flight_ > 0) {
        spdlog::warn("front: {} requests still running after the {} ms drain; closing them",
                     in_flight_, timeout.count());
    }
    for (auto& session : sessions_)
        session.stream->socket().close(ec);
}

}  // namespace ensemble
