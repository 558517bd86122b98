// The worker's public face: on its listener (http_listener.h), answers what the worker
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
#include "worker/http_listener.h"
#include "worker/request_policy.h"
#include "worker/worker_metrics.h"

namespace ensemble {

struct FrontConfig : ListenerConfig {
    std::size_t queue_max = 64;  // requests allowed to wait for a restarting engine
    // The model as Ollama's API describes it (/api/tags, /api/show, /api/ps).
    std::string model_path;
    int context = 0;     // what one request may use
    bool tools = false;  // the engine serves tool calls
};

class HttpFront final : public HttpListener {
  public:
    HttpFront(asio::io_context& io, FrontConfig config, ModelIdentity model, EngineRunner& engine,
              EngineProxy& proxy);

  private:
    awaitable<bool> handle(tcp_stream& stream, http::request<http::string_body>& request,
                           const PlainBlocks& plain) override;
    // Ollama's API (/api/...), translated to the engine's OpenAI API (worker/ollama_api.h).
    awaitable<bool> handle_ollama(tcp_stream& stream, http::request<http::string_body>& request,
                                  RequestTrace& trace);
    std::optional<http::response<http::string_body>> answer_ollama_locally(
        const http::request<http::string_body>& request) const;
    std::uint64_t memory_now() const;
    // The answer to a request the worker handles itself (or rejects), or nullopt to proxy it.
    std::optional<http::response<http::string_body>> answer_locally(
        http::request<http::string_body>& request, const PlainBlocks& plain) const;
    std::optional<ApiError> admission_error() const;
    http::response<http::string_body> health_response(bool keep_alive) const;
    http::response<http::string_body> metrics_response(bool keep_alive) const;

    FrontConfig config_;
    ModelIdentity model_;
    EngineRunner& engine_;
    EngineProxy& proxy_;
    long started_unix_ = 0;
    // Memory is measured at most once a second, however often /metrics is asked for.
    struct MemoryReading {
        std::chrono::steady_clock::time_point at;
        std::uint64_t worker = 0;
        std::uint64_t engine = 0;
    };
    mutable std::optional<MemoryReading> memory_;
};

}  // namespace ensemble
