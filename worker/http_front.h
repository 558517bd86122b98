// The worker's public face: owns the public port, reads client requests, answers what the worker
// itself knows (/health, /v1/models, every validation error) and hands the rest to the proxy.
// Draining stops accepting, lets requests in flight finish, and closes idle connections.
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <string>

#include "os/asio.h"
#include "worker/engine_proxy.h"
#include "worker/engine_runner.h"
#include "worker/request_policy.h"
#include "worker/worker_metrics.h"

namespace ensemble {

struct FrontConfig {
    std::string host = "127.0.0.1";
    unsigned short port = 0;
    std::size_t max_body_bytes = 32 * 1024 * 1024;
    std::string api_key;               // empty: no key required
    bool metrics_without_key = false;  // GET /metrics answers without the API key
    std::size_t queue_max = 64;        // requests allowed to wait for a restarting engine
    // A connection waits this long for a request to begin, then the headers must arrive within
    // header_timeout and the body within body_timeout: a slow or silent client holds nothing
    // for long.
    std::chrono::seconds idle_timeout{120};
    std::chrono::seconds header_timeout{30};
    std::chrono::seconds body_timeout{300};
    // Connections served at once; more are answered 503 with Retry-After and closed, well
    // before the descriptor limit.
    std::size_t max_connections = 1024;
    // A listening socket passed by the supervisor (protocol::kListenFd): accepted on, never
    // bound; it outlives this worker. nullopt: bind host:port (standalone).
    std::optional<int> listen_fd;
    // The model as Ollama's API describes it (/api/tags, /api/show, /api/ps).
    std::string model_path;
    int context = 0;     // what one request may use
    bool tools = false;  // the engine serves tool calls
};

class HttpFront {
  public:
    HttpFront(asio::io_context& io, FrontConfig config, ModelIdentity model, EngineRunner& engine,
              EngineProxy& proxy);

    // Binds the public port. A port in use is an error naming the port and what to do.
    Status listen();
    void start_accepting();
    // Stops accepting and waits (up to `timeout`) for requests in flight; then closes the rest.
    awaitable<void> drain(std::chrono::milliseconds timeout);

    unsigned short bound_port() const;
    std::size_t in_flight() const { return in_flight_; }

  private:
    struct Session {
        beast::tcp_stream* stream;
        bool idle;
        // No request served yet: a client that connected before a drain began is answered
        // (its request was on its way), not cut off like one idling between requests.
        bool fresh = true;
    };

    awaitable<void> accept_loop();
    awaitable<void> refuse_connection(tcp::socket socket);
    awaitable<void> serve(tcp::socket socket);
    awaitable<bool> handle(beast::tcp_stream& stream, http::request<http::string_body>& request);
    // Ollama's API (/api/...), translated to the engine's OpenAI API (worker/ollama_api.h).
    awaitable<bool> handle_ollama(beast::tcp_stream& stream,
                                  http::request<http::string_body>& request, RequestTrace& trace);
    std::optional<http::response<http::string_body>> answer_ollama_locally(
        const http::request<http::string_body>& request) const;
    std::uint64_t memory_now() const;
    awaitable<bool> reply(beast::tcp_stream& stream, http::response<http::string_body>& response);
    // The answer to a request the worker handles itself (or rejects), or nullopt to proxy it.
    std::optional<http::response<http::string_body>> answer_locally(
        http::request<http::string_body>& request) const;
    awaitable<void> reject_unreadable(beast::tcp_stream& stream, boost::system::error_code ec,
                                      std::string_view target);
    std::optional<ApiError> admission_error() const;
    http::response<http::string_body> health_response(bool keep_alive) const;
    http::response<http::string_body> metrics_response(bool keep_alive) const;

    asio::io_context& io_;
    FrontConfig config_;
    ModelIdentity model_;
    EngineRunner& engine_;
    EngineProxy& proxy_;
    tcp::acceptor acceptor_;
    std::list<Session> sessions_;
    std::size_t in_flight_ = 0;
    bool draining_ = false;
    long started_unix_ = 0;
    WorkerMetrics metrics_;
    // Memory is measured at most once a second, however often /metrics is asked for.
    struct MemoryReading {
        std::chrono::steady_clock::time_point at;
        std::uint64_t worker = 0;
        std::uint64_t engine = 0;
    };
    mutable std::optional<MemoryReading> memory_;
};

}  // namespace ensemble
