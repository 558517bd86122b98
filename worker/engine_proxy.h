// Forwards one client request to the engine and relays the answer back as it arrives: headers
// first, then every body chunk as soon as it is read (Server-Sent Events are never buffered).
// Engine connections are kept alive in a small pool, dropped whenever the engine restarts.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "os/asio.h"
#include "worker/engine_runner.h"
#include "worker/openai_error.h"

namespace ensemble {

struct ProxyLimits {
    // Longest silence allowed from the engine while a response is under way.
    std::chrono::seconds engine_timeout{600};
    // How long a request may wait for an engine that is restarting.
    std::chrono::seconds queue_timeout{60};
};

struct ProxyStats {
    std::uint64_t requests = 0;
    std::uint64_t failed = 0;
    std::uint64_t tokens = 0;       // generated tokens relayed (see TokenCounter)
    std::uint64_t streams_cut = 0;  // streams ended with an error event because the engine died
    std::uint64_t abandoned = 0;    // requests cancelled because their client went away
};

class EngineProxy {
  public:
    EngineProxy(EngineRunner& engine, ProxyLimits limits) : engine_(engine), limits_(limits) {}

    // Relays `request` (body already validated and pinned) and its response. Returns whether the
    // client connection can be kept alive.
    awaitable<bool> forward(beast::tcp_stream& client, http::request<http::string_body>& request);

    const ProxyStats& stats() const { return stats_; }

  private:
    struct Connection {
        stream_connection stream;
        beast::flat_buffer buffer;
        std::uint64_t generation;
        bool reused = false;
    };
    enum class Outcome {
        done_keep_alive,     // answered; the engine connection can be reused
        done_engine_closed,  // answered in full; the engine closed its connection (HTTP/1.0)
        done_close,          // the client connection must close
        retry,
        failed_before_response
    };

    awaitable<std::unique_ptr<Connection>> acquire(bool fresh_only);
    void release(std::unique_ptr<Connection> connection);
    awaitable<Outcome> relay(beast::tcp_stream& client, Connection& engine,
                             http::request<http::string_body>& request, bool client_keep_alive);
    Outcome client_left(const http::request<http::string_body>& request);
    awaitable<bool> engine_died_recently();  // polls for up to 100 ms
    awaitable<bool> send_error(beast::tcp_stream& client, const ApiError& error, bool keep_alive);

    EngineRunner& engine_;
    ProxyLimits limits_;
    ProxyStats stats_;
    std::vector<std::unique_ptr<Connection>> idle_;
};

}  // namespace ensemble
