// ensembled's HTTP status listener (supervisor.http), read-only: GET /metrics (the fleet, for
// Prometheus), /api/status and /api/events (what control.sock's `status` and `events` answer,
// as JSON; /api/events also as a server-sent event stream), and / (the status page, embedded).
// Nothing here changes the fleet.
//
// It runs on the supervisor's own event loop, so no client may hold that loop: connections,
// header bytes and streams are capped, every read and write has a deadline, a stream keeps at
// most one message in flight (a client that stops reading is dropped when its write times
// out), and the fleet is rendered at most ten times a second, however many clients ask.
//
// Its coroutines refer to it until they end: stop() it, then destroy it only once its
// io_context will not run again (ensembled: after io.run() returns); coroutine frames destroyed
// with the io_context after it leave it alone.
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <memory>
#include <string>

#include "os/asio.h"
#include "profiles/config.h"
#include "supervisor/fleet.h"
#include "supervisor/fleet_metrics.h"

namespace ensemble {

struct StatusHttpLimits {
    // Past this, the connection idle the longest is closed to make room; with none idle, the
    // new one is answered 503.
    std::size_t max_connections = 1024;
    std::size_t max_streams = 512;  // of those, following /api/events
    std::size_t max_header_bytes = 8 * 1024;
    // A connection must send its next request within this; a reply must be taken within
    // write_timeout, or the connection (a stream too) is closed.
    std::chrono::milliseconds request_timeout{10000};
    std::chrono::milliseconds write_timeout{15000};
    // A stream is sent the status (and new events) this often.
    std::chrono::milliseconds stream_interval{1000};
    // Answers of /api/status, /metrics and the streams share one rendering this young.
    std::chrono::milliseconds render_reuse{100};
};

class StatusHttp {
  public:
    // `token`: the bearer token every data route requires (empty: none, loopback only).
    StatusHttp(asio::io_context& io, const StatusHttpSettings& settings, std::string token,
               const Fleet& fleet, StatusHttpLimits limits = {});
    ~StatusHttp();
    StatusHttp(const StatusHttp&) = delete;
    StatusHttp& operator=(const StatusHttp&) = delete;

    // Binds host:port; an address in use or not local is an error that says so.
    Status listen();
    void start();
    // Closes the listener and every connection.
    void stop();

    unsigned short bound_port() const;

  private:
    struct Rendering;
    class Connection;

    awaitable<void> accept_loop();
    // At the cap: closes the connection idle the longest (waiting for its next request);
    // false when none is.
    bool make_room();
    awaitable<void> refuse(tcp_socket socket);
    awaitable<void> serve(std::shared_ptr<Connection> connection);
    awaitable<void> stream_events(Connection& connection, std::int64_t cursor);
    // The fleet as JSON and metrics, rendered again only when the last is older than
    // render_reuse; the newest events are kept with it for the streams.
    const Rendering& rendering();

    asio::io_context& io_;
    StatusHttpSettings settings_;
    std::string token_;
    const Fleet& fleet_;
    StatusHttpLimits limits_;
    tcp_acceptor acceptor_;
    std::list<std::shared_ptr<Connection>> connections_;
    std::size_t streams_ = 0;
    std::size_t refusals_ = 0;  // 503s being written to connections over the cap
    std::unique_ptr<Rendering> rendering_;
    bool stopped_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The token in supervisor.http_token_file: refused when the file is readable by others than
// its owner, or the token is shorter than 16 characters or not printable ASCII.
Result<std::string> read_status_token(const std::filesystem::path& file);

// The status page: one self-contained HTML file (no CDN, works offline), built into the binary.
extern const char* const kStatusPage;

}  // namespace ensemble
