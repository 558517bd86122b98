// An HTTP/1.1 listener with limits: accepts on its port (a socket the supervisor passed, or one
// it binds), reads each request within bounded sizes and times, refuses connections beyond its
// limit with 503, answers unreadable requests itself, and drains (stops accepting, lets requests
// in flight finish, closes idle connections). What a request gets is the subclass's `handle`: a
// model port's worker (http_front.h) or the front door (front_door.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <optional>
#include <string>

#include "os/asio.h"
#include "protocol/json_scan.h"
#include "protocol/result.h"
#include "worker/immediate_io.h"
#include "worker/openai_error.h"
#include "worker/worker_metrics.h"

namespace ensemble {

struct ListenerConfig {
    std::string host = "127.0.0.1";
    unsigned short port = 0;
    std::size_t max_body_bytes = 32 * 1024 * 1024;
    std::string api_key;               // empty: no key required
    bool metrics_without_key = false;  // GET /metrics answers without the API key
    // A connection waits this long for a request to begin, then the headers must arrive within
    // header_timeout and the body within body_timeout: a slow or silent client holds nothing
    // for long.
    std::chrono::seconds idle_timeout{120};
    std::chrono::seconds header_timeout{30};
    std::chrono::seconds body_timeout{300};
    // A write to the client that waits this long for its socket to take more (the client reads
    // too little for its buffers to drain) ends the connection: a client that stops reading
    // holds nothing for ever.
    std::chrono::seconds send_timeout = kDefaultSendTimeout;
    // Connections served at once; more are answered 503 with Retry-After and closed, well
    // before the descriptor limit.
    std::size_t max_connections = 1024;
    // A listening socket passed by the supervisor (protocol::kListenFd): accepted on, never
    // bound; it outlives this process. nullopt: bind host:port (standalone).
    std::optional<int> listen_fd;
};

class HttpListener {
  public:
    HttpListener(asio::io_context& io, ListenerConfig config);
    virtual ~HttpListener() = default;
    HttpListener(const HttpListener&) = delete;
    HttpListener& operator=(const HttpListener&) = delete;

    // Binds the public port. A port in use is an error naming the port and what to do.
    Status listen();
    void start_accepting();
    // Stops accepting and waits (up to `timeout`) for requests in flight, for the first request
    // of a connection accepted just before, and for a request already sent, or about to be (its
    // last answer went out under 0.5 s ago), on a kept-alive connection: each is answered and
    // its connection ends. Then closes the rest.
    awaitable<void> drain(std::chrono::milliseconds timeout);

    unsigned short bound_port() const;
    std::size_t in_flight() const { return in_flight_; }

  protected:
    // Answers one request that was read whole; returns whether the connection may be kept.
    // `plain`: the blocks of its body noted as it arrived (for scan_top_level_members).
    virtual awaitable<bool> handle(tcp_stream& stream, http::request<http::string_body>& request,
                                   const PlainBlocks& plain) = 0;
    // Sends `response` to a request made with `method`: to a HEAD, a GET's header without its
    // body (RFC 9110 9.3.2; a body after it would be read as the next answer). Returns whether
    // the connection may be kept.
    awaitable<bool> reply(tcp_stream& stream, http::response<http::string_body>& response,
                          http::verb method);
    bool draining() const { return draining_; }
    asio::io_context& io() { return io_; }

    WorkerMetrics metrics_;

  private:
    // A connection, from the moment it is accepted (before its first read begins): a drain
    // that begins in between sees it and waits for its request.
    struct Session {
        explicit Session(tcp_socket socket) : stream(std::move(socket)) {}
        tcp_stream stream;
        bool idle = true;
        // No request served yet: a client that connected before a drain began is answered
        // (its request was on its way), not cut off like one idling between requests.
        bool fresh = true;
        std::chrono::steady_clock::time_point idle_since = std::chrono::steady_clock::now();
    };

    awaitable<void> accept_loop();
    awaitable<void> refuse_connection(tcp_socket socket);
    awaitable<void> serve(std::list<Session>::iterator session);
    awaitable<void> close_idle_sessions();
    // A drain waiting for requests and connections to end looks again at once.
    void wake_drain();
    awaitable<void> reject_unreadable(tcp_stream& stream, boost::system::error_code ec,
                                      const http::request_header<>& request);
    // Answers `error` to `request` in the shape of its target's API; the connection ends after
    // it.
    awaitable<void> reject(tcp_stream& stream, const ApiError& error,
                           const http::request_header<>& request);

    asio::io_context& io_;
    ListenerConfig limits_;
    tcp_acceptor acceptor_;
    std::list<Session> sessions_;
    std::size_t in_flight_ = 0;
    bool draining_ = false;
    steady_timer* drain_wake_ = nullptr;  // the drain's wait, while it waits
    bool idle_sweep_running_ = false;
};

}  // namespace ensemble
