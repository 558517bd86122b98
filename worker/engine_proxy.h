// Forwards one client request to the engine and relays the answer back as it arrives: headers
// first, then every body chunk as soon as it is read (Server-Sent Events are never buffered).
// Engine connections are kept alive in a small pool, dropped whenever the engine restarts.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <vector>

#include "os/asio.h"
#include "worker/answer_filter.h"
#include "worker/immediate_io.h"
#include "worker/openai_error.h"
#include "worker/proxy_target.h"

namespace ensemble {

struct ProxyLimits {
    // Longest silence allowed from the engine once a request is sent to it, until the end of
    // its answer (checked every tenth of a second).
    std::chrono::seconds engine_timeout{600};
    // The listener's send_timeout, for the answers relayed to its clients.
    std::chrono::seconds send_timeout = kDefaultSendTimeout;
    // How long a request may wait for an engine that is restarting.
    std::chrono::seconds queue_timeout{60};
    // Engine connections kept open between requests: the engine's parallel slots, so that as
    // many requests as it serves at once need no new connection (with 16 for 32 slots, half the
    // requests at 32 connections paid a connect and the engine's accept). llama-server keeps
    // slots + 2 HTTP threads, so this never holds all of them.
    std::size_t max_idle_connections = 4;
    // The client's Authorization header goes on (the front door: the model port checks the
    // same key); an engine never sees it.
    bool keep_authorization = false;
};

// What became of one proxied request, for the worker's metrics.
struct RequestTrace {
    using Clock = std::chrono::steady_clock;
    Clock::time_point began = Clock::now();      // the request was read
    unsigned status = 0;                         // what the client was answered (0: nothing)
    std::optional<Clock::duration> first_token;  // an event stream's first token, relayed
    std::uint64_t prompt_tokens = 0;             // the answer's usage.prompt_tokens, if any
    AnswerFilter* filter = nullptr;              // rewrites the answer (Ollama's API), if set
};

struct ProxyStats {
    std::uint64_t requests = 0;
    std::uint64_t failed = 0;
    std::uint64_t tokens = 0;       // generated tokens relayed (see TokenCounter)
    std::uint64_t streams_cut = 0;  // streams ended with an error event because the engine died
    std::uint64_t abandoned = 0;    // requests cancelled: their client went away or stopped reading
    std::uint64_t active = 0;       // requests being relayed now
};

class EngineProxy {
  public:
    EngineProxy(ProxyTarget& engine, ProxyLimits limits)
        : engine_(engine),
          limits_(limits),
          watchdog_(std::make_shared<Watchdog>(Watchdog{limits.engine_timeout, {}, false})) {}

    // Relays `request` (body already validated and pinned) and its response. Returns whether the
    // client connection can be kept alive.
    awaitable<bool> forward(tcp_stream& client, http::request<http::string_body>& request,
                            RequestTrace& trace);

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
        failed_before_response,
        engine_silent  // nothing from the engine for engine_timeout, before its answer began
    };
    // Every relay in flight is looked over by one watchdog, ticking every tenth of a second while
    // any runs: it times the engine's silence (a deadline armed and cancelled around every read,
    // Beast's per-operation timeout, cost an extra event-loop turn per streamed chunk), and it
    // looks at each client whose request is with the engine, for a departure (a watch armed per
    // request cost a system call each, about 2 % of the throughput at 8 connections; this costs one
    // per tick, only for requests that outlast one). Shared with the watches and the watchdog,
    // whose coroutine frames may outlive the proxy at shutdown.
    struct WatchedRelay {
        stream_connection* engine = nullptr;
        // time_point::max() while the relay waits on its client, not on the engine
        std::chrono::steady_clock::time_point last_heard = std::chrono::steady_clock::now();
        bool timed_out = false;
        tcp_socket* client = nullptr;  // once the request is on its way to the engine
        bool client_left = false;
    };
    struct Watchdog {
        std::chrono::seconds engine_timeout;
        std::list<WatchedRelay> relays;
        bool ticking = false;
    };
    class RelayWatch;
    static awaitable<void> watch_relays(std::shared_ptr<Watchdog> watchdog);

    // An engine connection: a pooled one if there is one (no coroutine, the usual case), else a
    // new one. Null when the engine refuses.
    std::unique_ptr<Connection> take_idle();
    awaitable<std::unique_ptr<Connection>> connect_new();
    void release(std::unique_ptr<Connection> connection);
    awaitable<Outcome> relay(tcp_stream& client, Connection& engine,
                             http::request<http::string_body>& request, bool client_keep_alive,
                             RequestTrace& trace);
    Outcome client_left(const http::request<http::string_body>& request);
    Outcome client_stopped_reading(const http::request<http::string_body>& request);
    awaitable<bool> engine_died_recently();  // polls for up to 100 ms
    awaitable<bool> send_error(tcp_stream& client, const http::request_header<>& request,
                               const ApiError& error, bool keep_alive, RequestTrace& trace);

    ProxyTarget& engine_;
    ProxyLimits limits_;
    ProxyStats stats_;
    std::vector<std::unique_ptr<Connection>> idle_;
    std::shared_ptr<Watchdog> watchdog_;
};

}  // namespace ensemble
