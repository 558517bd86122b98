#include "worker/http_listener.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <iterator>

#include "os/listening_socket.h"
#include "os/port_holder.h"
#include "worker/appending_string_body.h"
#include "worker/cors.h"
#include "worker/immediate_io.h"
#include "worker/ollama_api.h"

namespace ensemble {

namespace {

constexpr std::uint32_t kHeaderLimit = 64 * 1024;
// What a connection reads into while it waits for a request.
constexpr std::size_t kIdleRead = 4096;
constexpr auto kIdleSweep = std::chrono::seconds(1);
// How long a drain waits for a request that may be on its way: the first one of a connection
// accepted just before the drain, and the next one of a kept-alive connection answered just
// before (a pooled client sending back to back; a round trip on a slow network). Each is
// answered, then its connection ends; a connection that stays silent does not hold up the stop.
constexpr auto kRequestOnItsWay = std::chrono::milliseconds(500);

}  // namespace

HttpListener::HttpListener(asio::io_context& io, ListenerConfig config)
    : io_(io), limits_(std::move(config)), acceptor_(io) {}

Status HttpListener::listen() {
    boost::system::error_code ec;
    if (limits_.listen_fd) {
        const int fd = *limits_.listen_fd;
        if (auto ok = check_listening_socket(fd, limits_.port, limits_.host); !ok)
            return ok.error();
        sockaddr_storage address{};
        socklen_t length = sizeof address;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
        acceptor_.assign(address.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
        if (ec) {
            return Error{"no_listening_socket", "cannot accept on the passed socket of port " +
                                                    std::to_string(limits_.port) + ": " +
                                                    ec.message()};
        }
        return Ok{};
    }
    const auto address = asio::ip::make_address(limits_.host, ec);
    if (ec) return Error{"bad_host", "'" + limits_.host + "' is not an IP address to bind"};
    const tcp::endpoint endpoint{address, limits_.port};
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp_acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (ec == asio::error::address_in_use) {
        return Error{"port_in_use", "port " + std::to_string(limits_.port) + " on " + limits_.host +
                                        " is already in use by another process (" +
                                        port_holder_hint(limits_.port) +
                                        "); stop it or choose another port"};
    }
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        return Error{"bind_failed", "cannot listen on " + limits_.host + ":" +
                                        std::to_string(limits_.port) + ": " + ec.message()};
    }
    return Ok{};
}

unsigned short HttpListener::bound_port() const {
    boost::system::error_code ec;
    const auto endpoint = acceptor_.local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

void HttpListener::start_accepting() {
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

awaitable<void> HttpListener::accept_loop() {
    while (!draining_) {
        boost::system::error_code ec;
        auto socket = co_await acceptor_.async_accept(on_error(ec));
        if (ec == asio::error::operation_aborted || (ec && draining_)) break;
        if (ec) {
            // Out of descriptors or similar: back off briefly instead of spinning.
            spdlog::warn("front: accept failed: {}", ec.message());
            steady_timer pause(io_, std::chrono::milliseconds(50));
            co_await pause.async_wait(on_error(ec));
            continue;
        }
        // Accepted: served even if a drain has begun meanwhile (the drain waits for it).
        socket.set_option(tcp::no_delay(true), ec);
        if (sessions_.size() >= limits_.max_connections) {
            asio::co_spawn(io_, refuse_connection(std::move(socket)), asio::detached);
            continue;
        }
        // For OutgoingMessage::send_now; if refused, writes wait their turn.
        socket.non_blocking(true, ec);
        // A session from now, not from serve's first step: that step is posted, and a drain
        // posted earlier would run first and find nothing to wait for.
        const auto session = sessions_.emplace(sessions_.end(), std::move(socket));
        if (!idle_sweep_running_) {
            idle_sweep_running_ = true;
            asio::co_spawn(io_, close_idle_sessions(), asio::detached);
        }
        asio::co_spawn(io_, serve(session), asio::detached);
    }
}

awaitable<void> HttpListener::refuse_connection(tcp_socket socket) {
    tcp_stream stream(std::move(socket));
    const auto response = make_error_response(
        ApiError{http::status::service_unavailable, "server_error", "too_many_connections",
                 "this port already serves " + std::to_string(limits_.max_connections) +
                     " connections; retry shortly, or reuse connections (keep-alive)",
                 1},
        false);
    // (Its request is not read.) A port at its cap gives a refusal 5 s, not the send timeout.
    constexpr auto kRefusalSendTimeout = std::chrono::seconds(5);
    boost::system::error_code ec;
    co_await send_message(stream, response, kRefusalSendTimeout, ec);
    metrics_.answered("", static_cast<unsigned>(http::status::service_unavailable));
    // Closing with the request unread would reset the connection, and the client might never
    // see the 503: finish sending, then read (and drop) what it sent, briefly and boundedly.
    stream.socket().shutdown(tcp_socket::shutdown_send, ec);
    stream.expires_after(std::chrono::milliseconds(250));
    std::array<char, 4096> sink{};
    for (std::size_t dropped = 0; dropped < 64 * 1024;) {
        const auto into = asio::buffer(sink);
        const auto n = co_await read_more(stream, into, ec);
        if (ec) break;
        dropped += n;
    }
}

namespace {

// Whether the request asks for a 100 Continue before it sends its body (RFC 9110 10.1.1).
bool expects_continue(const http::request<AppendingStringBody>& request) {
    if (request.version() < 11) return false;
    const auto expect = sv(request[http::field::expect]);
    constexpr std::string_view kContinue = "100-continue";
    return expect.size() == kContinue.size() &&
           std::equal(expect.begin(), expect.end(), kContinue.begin(),
                      [](char c, char lower) { return (c | 0x20) == lower; });
}

// A target in absolute form ("POST http://host:8100/v1/chat/completions", as a client sends it
// to a server it was told is a proxy) is taken as its path and query, and its authority as the
// Host (RFC 9112 3.2.2: a server must accept it). Returns the error for one that names no host
// (RFC 9110 4.2.1), and for one holding a fragment: no target does (RFC 9112 3.2), and the
// worker and its engine could each take a different path from it. Targets of other forms are
// left: they are not found.
std::optional<ApiError> to_origin_form(http::request<http::string_body>& request) {
    const auto target = sv(request.target());
    if (target.find('#') != std::string_view::npos) {
        return ApiError{http::status::bad_request, "invalid_request_error", "bad_http",
                        "the request target '" + std::string(target) +
                            "' holds a fragment ('#'), which is never sent: leave it out"};
    }
    if (target.starts_with('/')) return std::nullopt;  // the usual: nothing to do
    const auto scheme_end = target.find("://");
    if (scheme_end == std::string_view::npos) return std::nullopt;
    const beast::string_view scheme(target.data(), scheme_end);
    if (!beast::iequals(scheme, "http") && !beast::iequals(scheme, "https")) return std::nullopt;
    const auto after_scheme = target.substr(scheme_end + 3);
    const auto authority_end = after_scheme.find_first_of("/?");
    const auto authority = after_scheme.substr(0, authority_end);
    if (authority.empty() || authority.find('@') != std::string_view::npos) {
        return ApiError{http::status::bad_request, "invalid_request_error", "bad_http",
                        "the request target '" + std::string(target) +
                            "' names no host, or credentials in it: send a path such as "
                            "/v1/chat/completions"};
    }
    std::string origin = authority_end == std::string_view::npos
                             ? std::string()
                             : std::string(after_scheme.substr(authority_end));
    if (!origin.starts_with('/')) origin.insert(0, 1, '/');
    request.set(http::field::host, std::string(authority));
    request.target(origin);
    return std::nullopt;
}

}  // namespace

awaitable<void> HttpListener::serve(std::list<Session>::iterator session) {
    tcp_stream& stream = session->stream;
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<AppendingStringBody> parser;
        parser.body_limit(limits_.max_body_bytes);
        parser.header_limit(kHeaderLimit);
        boost::system::error_code ec;
        session->idle = true;
        // Draining, the wait for a next request is the drain's to end (HttpListener::drain).
        if (buffer.size() == 0) {  // waiting for the next request to begin
            // (Its time limit is close_idle_sessions', not a timer armed and cancelled per
            // request.)
            session->idle_since = std::chrono::steady_clock::now();
            const auto n = co_await stream.async_read_some(buffer.prepare(kIdleRead), on_error(ec));
            if (ec) break;
            buffer.commit(n);
        }
        session->idle = false;
        // The header first (a small request is usually whole in the buffer now: parsed in
        // place), so that its fields are known before any trailer can join them.
        parser.eager(false);
        parse_buffered(parser, buffer, ec, /*header_only=*/true);
        if (!ec && !parser.is_header_done()) {
            stream.expires_after(limits_.header_timeout);
            co_await read_http(stream, buffer, parser, ec, PeerSent::maybe, /*header_only=*/true);
        }
        // A Transfer-Encoding whose last coding is not chunked leaves the body's length unknown:
        // Beast would read none, and the body would be taken for the next request (smuggling
        // past a proxy in front that reads it otherwise). RFC 9112 6.3: 400, and close.
        if (!ec && parser.get().count(http::field::transfer_encoding) > 0 && !parser.chunked())
            ec = http::error::bad_transfer_encoding;
        const auto header_fields = ec ? 0 : std::distance(parser.get().begin(), parser.get().end());
        PlainBlocks plain;  // of a large body, noted as it arrives
        if (!ec && !parser.is_done()) {
            // A client that waits for leave to send its body (curl does past 1 MiB) gets it now,
            // not after its own wait of a second.
            if (buffer.size() == 0 && expects_continue(parser.get())) {
                constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
                stream.expires_after(limits_.body_timeout);
                co_await asio::async_write(stream, asio::buffer(kContinue), on_error(ec));
            }
            parser.eager(true);
            stream.expires_after(limits_.body_timeout);
            if (!ec) co_await read_request_body(stream, buffer, parser, plain, ec);
        }
        if (ec) {
            // (The method and target are known once the request line is read, before the
            // headers are.)
            co_await reject_unreadable(stream, ec, parser.get());
            break;
        }
        // Beast adds a chunked body's trailer fields to the header's, each beside any of the
        // same name (Boost 1.74: all of them; newer: only advertised, well-known ones such as
        // ETag, the rest dropped): they could not be told apart, and must not count as the
        // header (an Authorization there passing the key check, anything else reaching the
        // engine).
        // Clients do not send them with an API request: refused (RFC 9110 6.5.1 lets a
        // recipient that cannot keep them apart do so).
        if (std::distance(parser.get().begin(), parser.get().end()) != header_fields) {
            const ApiError trailer{http::status::bad_request, "invalid_request_error", "bad_http",
                                   "the request's chunked body ends with trailer fields, which "
                                   "this server does not take: send them in the header"};
            co_await reject(stream, trailer, parser.get());
            break;
        }
        auto request = to_string_body(parser.release());
        if (auto bad_target = to_origin_form(request)) {
            co_await reject(stream, *bad_target, request);
            break;
        }
        // An HTTP/1.0 client cannot take a chunked answer (RFC 9112 6.1): an answer whose length
        // is not known ahead ends when its connection does, so every answer to such a client
        // ends its connection, and each says so (it may have asked to keep it).
        if (request.version() < 11) request.keep_alive(false);
        // The body was moved out: an idle keep-alive connection holds 4 KiB, not its largest.
        if (buffer.capacity() > kIdleRead) buffer.shrink_to_fit();
        stream.expires_never();
        ++in_flight_;
        session->fresh = false;
        bool keep_alive = false;
        try {
            keep_alive = co_await handle(stream, request, plain);
        } catch (const std::exception& e) {
            // A programming error: this request is lost, not the port's count of connections.
            spdlog::error("front: answering {} failed: {}; closing its connection",
                          sv(request.target()), e.what());
        }
        --in_flight_;
        wake_drain();
        if (!keep_alive) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp_socket::shutdown_send, ignored);
    sessions_.erase(session);
    wake_drain();
}

void HttpListener::wake_drain() {
    if (drain_wake_ != nullptr) drain_wake_->cancel();
}

// Ends the connections that have waited longer than idle_timeout for a request to begin, once a
// second while there are any.
awaitable<void> HttpListener::close_idle_sessions() {
    steady_timer tick(io_);
    while (!sessions_.empty()) {
        tick.expires_after(kIdleSweep);
        boost::system::error_code ec;
        co_await tick.async_wait(on_error(ec));
        const auto now = std::chrono::steady_clock::now();
        for (auto& session : sessions_) {
            if (!session.idle) continue;
            // A client that closed its side together with its last request: its read waits for
            // an edge that has come (os/stream_reads.h). One peek a sweep, not one a request.
            const bool left = kDrainedReadsWaitForEpoll && now - session.idle_since >= kIdleSweep &&
                              peer_closed(session.stream);
            if (left || now - session.idle_since >= limits_.idle_timeout)
                session.stream.socket().cancel(ec);  // its read ends: the connection closes
        }
    }
    idle_sweep_running_ = false;
}

awaitable<void> HttpListener::reject_unreadable(tcp_stream& stream, boost::system::error_code ec,
                                                const http::request_header<>& request) {
    std::optional<ApiError> error;
    if (ec == http::error::body_limit) {
        error =
            ApiError{http::status::payload_too_large, "invalid_request_error", "request_too_large",
                     "the request body is larger than this port's limit of " +
                         std::to_string(limits_.max_body_bytes) + " bytes"};
    } else if (ec == http::error::header_limit) {
        error = ApiError{http::status::request_header_fields_too_large, "invalid_request_error",
                         "headers_too_large", "the request headers exceed 64 KiB"};
    } else if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
        error = ApiError{http::status::bad_request, "invalid_request_error", "bad_http",
                         "malformed HTTP request: " + ec.message()};
    }
    if (!error) co_return;  // the client closed or timed out: nobody to answer
    co_await reject(stream, *error, request);
}

awaitable<void> HttpListener::reject(tcp_stream& stream, const ApiError& error,
                                     const http::request_header<>& request) {
    const auto target = sv(request.target());
    auto response = target.starts_with("/api/") ? ollama::error_response(error, false)
                                                : make_error_response(error, false);
    cors::allow_origin(request, response);
    co_await reply(stream, response, request.method());
    metrics_.answered(target, response.result_int());
}

awaitable<bool> HttpListener::reply(tcp_stream& stream, http::response<http::string_body>& response,
                                    http::verb method) {
    if (method == http::verb::head) {
        const auto length = response.body().size();
        response.body().clear();
        response.content_length(length);
    }
    boost::system::error_code ec;
    const bool keep_alive = response.keep_alive() && !draining_;
    response.keep_alive(keep_alive);
    co_await send_message(stream, response, limits_.send_timeout, ec);
    if (ec == beast::error::timeout) {
        spdlog::info(
            "front: a write to a client could not go on for {} s (--send-timeout): it reads too "
            "little of its answer, or none; its "
            "connection is closed",
            limits_.send_timeout.count());
    }
    co_return keep_alive && !ec;
}

awaitable<void> HttpListener::drain(std::chrono::milliseconds timeout) {
    draining_ = true;
    boost::system::error_code ec;
    acceptor_.close(ec);
    const auto began = std::chrono::steady_clock::now();
    const auto deadline = began + timeout;
    const auto fresh_deadline =
        began + std::min<std::chrono::milliseconds>(timeout, kRequestOnItsWay);
    steady_timer timer(io_);
    for (;;) {
        bool busy = in_flight_ > 0;
        bool fresh_waiting = false;
        bool kept_waiting = false;
        const auto now = std::chrono::steady_clock::now();
        for (auto& session : sessions_) {
            if (!session.idle) busy = true;  // reading a request (or answering one)
            if (session.idle && session.fresh) fresh_waiting = true;
            if (!session.idle || session.fresh) continue;
            // A kept-alive connection: a request already on it is answered (its read ends
            // soon); one recently answered may still send one; any other wait is ended.
            if (bytes_waiting(session.stream.socket())) {
                busy = true;
            } else if (now - session.idle_since < kRequestOnItsWay &&
                       !peer_closed(session.stream.socket())) {
                kept_waiting = true;
            } else {
                session.stream.socket().cancel(ec);
            }
        }
        const bool fresh_done = !fresh_waiting || now >= fresh_deadline;
        if ((!busy && fresh_done && !kept_waiting) || now >= deadline) break;
        // Looked at again when a request or a connection ends (the usual last step), and every
        // 20 ms for the windows and the deadline.
        timer.expires_after(std::chrono::milliseconds(20));
        drain_wake_ = &timer;
        co_await timer.async_wait(on_error(ec));
        drain_wake_ = nullptr;
    }
    if (in_flight_ > 0) {
        spdlog::warn("front: {} requests still running after the {} ms drain; closing them",
                     in_flight_, timeout.count());
    }
    for (auto& session : sessions_)
        session.stream.socket().close(ec);
}

}  // namespace ensemble
