#include "supervisor/status_http.h"

#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <fstream>
#include <optional>

#include "os/listening_socket.h"
#include "os/stream_reads.h"
#include "protocol/bearer_token.h"
#include "protocol/prometheus_text.h"
#include "supervisor/control_api.h"

namespace ensemble {

namespace {

using Response = http::response<http::string_body>;
using Clock = std::chrono::steady_clock;

constexpr int kRecentEvents = 50;  // /api/events by default, and what a new stream starts with
constexpr int kKeptEvents = 200;   // kept for the streams, read on from the newest seen
constexpr int kMaxEventLines = 1000;
// Refusals of connections over the cap, in flight at once; past this a connection is closed
// unanswered, so a flood cannot take the supervisor's descriptors.
constexpr std::size_t kMaxRefusals = 64;
constexpr int kStreamSendBuffer = 64 * 1024;

// The path and query of a request target.
struct Target {
    std::string_view path;
    std::string_view query;
};

Target split_target(std::string_view target) {
    const auto mark = target.find('?');
    if (mark == std::string_view::npos) return {target, {}};
    return {target.substr(0, mark), target.substr(mark + 1)};
}

// A query parameter's value as a non-negative number: nullopt when absent; -1 when malformed.
std::optional<std::int64_t> query_number(std::string_view query, std::string_view key) {
    while (!query.empty()) {
        const auto amp = query.find('&');
        const auto pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) != key) continue;
        if (eq == std::string_view::npos) return -1;
        const auto text = pair.substr(eq + 1);
        std::int64_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc() || end != text.data() + text.size() || value < 0) return -1;
        return value;
    }
    return std::nullopt;
}

// The host part of a Host header: "[::1]:8099" -> "::1", "localhost:8099" -> "localhost".
std::string host_name(std::string_view host) {
    if (!host.empty() && host.front() == '[') {
        const auto close = host.find(']');
        return std::string(host.substr(1, close == std::string_view::npos ? 0 : close - 1));
    }
    return std::string(host.substr(0, host.find(':')));
}

void set_common_headers(Response& response) {
    response.set(http::field::server, "ensembled");
    response.set(http::field::cache_control, "no-store");
    response.set("X-Content-Type-Options", "nosniff");
}

// JSON text of what the fleet says: a byte that is not UTF-8 (a model path in Latin-1, say)
// becomes U+FFFD rather than an exception.
std::string json_text(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Response make_response(http::status status, const char* content_type, std::string body,
                       bool keep_alive, bool head) {
    Response response{status, 11};
    set_common_headers(response);
    response.set(http::field::content_type, content_type);
    response.body() = std::move(body);
    response.prepare_payload();
    if (head) response.body().clear();  // Content-Length stays that of the GET
    response.keep_alive(keep_alive);
    return response;
}

Response error_response(http::status status, std::string_view code, const std::string& message,
                        bool keep_alive, bool head) {
    const nlohmann::json body = {{"error", {{"code", code}, {"message", message}}}};
    return make_response(status, "application/json", json_text(body) + "\n", keep_alive, head);
}

// Ends a connection whose request may be partly unread: closing at once would reset it and the
// client might never see the reply just written. Stop sending, drop what comes briefly, close.
awaitable<void> finish(tcp_stream& stream) {
    boost::system::error_code ec;
    stream.socket().shutdown(tcp_socket::shutdown_send, ec);
    stream.expires_after(std::chrono::milliseconds(250));
    std::array<char, 4096> sink{};
    const auto into = asio::buffer(sink);
    for (std::size_t dropped = 0; !ec && dropped < 64 * 1024;)
        dropped += co_await read_more(stream, into, ec);
}

}  // namespace

Result<std::string> read_status_token(const std::filesystem::path& file) {
    const auto where = "supervisor.http_token_file " + file.string();
    struct stat info {};
    if (::stat(file.c_str(), &info) != 0)
        return Error{"bad_token_file", where + ": " + std::strerror(errno)};
    if (!S_ISREG(info.st_mode) || info.st_size > 4096)
        return Error{"bad_token_file", where + " is not a regular file of at most 4 KiB"};
    if ((info.st_mode & 077) != 0)
        return Error{"bad_token_file", where + " may be read by other users: chmod 600 it"};
    std::ifstream in(file);
    std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) return Error{"bad_token_file", where + " cannot be read"};
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())))
        token.pop_back();
    const bool printable =
        std::all_of(token.begin(), token.end(), [](char c) { return c > ' ' && c < 127; });
    if (token.size() < 16 || !printable) {
        return Error{"bad_token_file",
                     where +
                         " must hold one token of at least 16 printable characters "
                         "(e.g. from 'openssl rand -hex 32')"};
    }
    return token;
}

struct StatusHttp::Rendering {
    Clock::time_point at{};
    std::string status_json;
    std::string metrics;
    // The newest events, oldest first, each already an SSE message.
    std::deque<std::pair<std::int64_t, std::string>> recent;
    std::int64_t last_event_id = 0;
};

class StatusHttp::Connection {
  public:
    explicit Connection(tcp_socket socket)
        : stream(std::move(socket)), wake(stream.get_executor()) {}
    void close() {
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp_socket::shutdown_both, ignored);
        stream.socket().close(ignored);
        wake.cancel();
    }

    tcp_stream stream;
    steady_timer wake;  // a stream's pause between messages
    // Waiting for its next request, since when: the longest-idle one makes room at the cap.
    std::optional<Clock::time_point> idle_since;
};

// Keeps the listener's books however a coroutine ends — an exception included — unless the
// listener itself is gone (its io_context's coroutines are destroyed after it).
template <typename Undo>
class OnExit {
  public:
    OnExit(std::shared_ptr<bool> alive, Undo undo) : alive_(std::move(alive)), undo_(undo) {}
    OnExit(const OnExit&) = delete;
    OnExit& operator=(const OnExit&) = delete;
    ~OnExit() {
        if (*alive_) undo_();
    }

  private:
    std::shared_ptr<bool> alive_;
    Undo undo_;
};

StatusHttp::StatusHttp(asio::io_context& io, const StatusHttpSettings& settings, std::string token,
                       const Fleet& fleet, StatusHttpLimits limits)
    : io_(io),
      settings_(settings),
      token_(std::move(token)),
      fleet_(fleet),
      limits_(limits),
      acceptor_(io),
      rendering_(std::make_unique<Rendering>()) {}

StatusHttp::~StatusHttp() {
    stop();
    *alive_ = false;
}

Status StatusHttp::listen() {
    auto socket = ListeningSocket::open(settings_.host, settings_.port);
    if (!socket) {
        return Error{socket.error().code, "supervisor.http cannot listen on " + settings_.host +
                                              ":" + std::to_string(settings_.port) + ": " +
                                              socket.error().message};
    }
    const auto protocol = settings_.host.find(':') == std::string::npos ? tcp::v4() : tcp::v6();
    boost::system::error_code ec;
    acceptor_.assign(protocol, socket->release(), ec);
    if (ec) return Error{"listen_failed", "supervisor.http: " + ec.message()};
    return Ok{};
}

void StatusHttp::start() {
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

void StatusHttp::stop() {
    if (stopped_) return;
    stopped_ = true;
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    for (auto& connection : connections_)
        connection->close();
}

unsigned short StatusHttp::bound_port() const {
    boost::system::error_code ec;
    const auto endpoint = acceptor_.local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

const StatusHttp::Rendering& StatusHttp::rendering() {
    auto& r = *rendering_;
    const auto now = Clock::now();
    if (r.at != Clock::time_point{} && now - r.at < limits_.render_reuse) return r;
    r.at = now;
    const auto status = fleet_.status();
    r.status_json = json_text(to_json(status));
    r.metrics = fleet_metrics(status, {connections_.size(), streams_});
    // Only what is new since the last rendering is read from the event log.
    auto events = fleet_.events(kKeptEvents, r.last_event_id);
    if (events && events->size() == static_cast<std::size_t>(kKeptEvents) && r.last_event_id > 0) {
        // More came than are kept since the last rendering (nobody was looking): on to the
        // newest; a follower behind them is told what it missed.
        events = fleet_.events(kKeptEvents, 0);
        r.recent.clear();
    }
    if (events) {
        for (const auto& e : *events) {
            r.recent.emplace_back(e.id, "id: " + std::to_string(e.id) + "\nevent: event\ndata: " +
                                            json_text(to_json(e)) + "\n\n");
            r.last_event_id = e.id;
        }
        while (r.recent.size() > static_cast<std::size_t>(kKeptEvents))
            r.recent.pop_front();
    }
    return r;
}

awaitable<void> StatusHttp::accept_loop() {
    while (!stopped_) {
        boost::system::error_code ec;
        auto socket = co_await acceptor_.async_accept(on_error(ec));
        if (ec == asio::error::operation_aborted || stopped_) break;
        if (ec) {
            // Out of descriptors or similar: back off briefly instead of spinning.
            spdlog::warn("supervisor.http: accept failed: {}", ec.message());
            steady_timer pause(io_, std::chrono::milliseconds(100));
            co_await pause.async_wait(on_error(ec));
            continue;
        }
        socket.set_option(tcp::no_delay(true), ec);
        if (connections_.size() >= limits_.max_connections && make_room()) {
            // The longest-idle connection was closed for this one: clients that only hold
            // connections open cannot lock out those that ask.
        } else if (connections_.size() >= limits_.max_connections) {
            if (refusals_ >= kMaxRefusals) continue;  // the socket closes here, unanswered
            ++refusals_;
            asio::co_spawn(io_, refuse(std::move(socket)),
                           [this](const std::exception_ptr&) { --refusals_; });
            continue;
        }
        auto connection = std::make_shared<Connection>(std::move(socket));
        connections_.push_back(connection);
        asio::co_spawn(io_, serve(connection), asio::detached);
    }
}

bool StatusHttp::make_room() {
    std::shared_ptr<Connection> oldest;
    for (const auto& c : connections_) {
        if (c->idle_since && (!oldest || *c->idle_since < *oldest->idle_since)) oldest = c;
    }
    if (!oldest) return false;  // every one is busy or streaming
    oldest->idle_since.reset();
    oldest->close();
    return true;
}

awaitable<void> StatusHttp::refuse(tcp_socket socket) {
    tcp_stream stream(std::move(socket));
    stream.expires_after(std::chrono::seconds(2));
    auto response =
        error_response(http::status::service_unavailable, "too_many_connections",
                       "ensembled's status listener already serves " +
                           std::to_string(limits_.max_connections) + " connections; retry shortly",
                       false, false);
    response.set(http::field::retry_after, "1");
    boost::system::error_code ec;
    co_await http::async_write(stream, response, on_error(ec));
    if (!ec) co_await finish(stream);
}

awaitable<void> StatusHttp::serve(std::shared_ptr<Connection> connection) {
    const OnExit leave(alive_, [this, connection] {
        connection->close();
        connections_.remove(connection);
    });
    auto& stream = connection->stream;
    beast::flat_buffer buffer;
    while (!stopped_) {
        http::request_parser<http::empty_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(limits_.max_header_bytes));
        stream.expires_after(limits_.request_timeout);
        boost::system::error_code ec;
        connection->idle_since = Clock::now();
        // (`maybe`: a scraper that closes its side with its request is let go at once, for a
        // peek per request, off any hot path.)
        co_await read_http(stream, buffer, parser, ec, PeerSent::maybe);
        connection->idle_since.reset();
        if (stopped_) break;
        if (ec) {
            // A client that left or went silent is simply closed; malformed bytes get a reason.
            const bool unreadable = ec != http::error::end_of_stream &&
                                    ec != beast::error::timeout && ec != asio::error::eof &&
                                    ec != asio::error::connection_reset;
            if (unreadable) {
                const bool too_large = ec == http::error::header_limit;
                auto refusal =
                    too_large
                        ? error_response(http::status::request_header_fields_too_large,
                                         "headers_too_large",
                                         "request headers are limited to " +
                                             std::to_string(limits_.max_header_bytes) + " bytes",
                                         false, false)
                        : error_response(http::status::bad_request, "bad_request",
                                         "the request could not be read: " + ec.message() +
                                             " (this listener takes GET requests without a body)",
                                         false, false);
                stream.expires_after(limits_.write_timeout);
                co_await http::async_write(stream, refusal, on_error(ec));
                if (!ec) co_await finish(stream);
            }
            break;
        }
        const auto& request = parser.get();
        const bool head = request.method() == http::verb::head;
        const bool keep_alive = request.keep_alive();
        const auto [path, query] = split_target(sv(request.target()));
        const bool page = path == "/" || path == "/index.html";
        std::optional<Response> response;
        if (request.method() != http::verb::get && !head) {
            response = error_response(http::status::method_not_allowed, "method_not_allowed",
                                      "this listener is read-only: it takes GET and HEAD",
                                      keep_alive, false);
            response->set(http::field::allow, "GET, HEAD");
        } else if (token_.empty() && !is_loopback_host(host_name(sv(request[http::field::host])))) {
            // With no token the listener is loopback-only; a foreign Host name is a page of
            // another site reaching it through DNS rebinding.
            response = error_response(http::status::forbidden, "forbidden_host",
                                      "this listener answers only to localhost, 127.0.0.1 or "
                                      "[::1] (set http_token_file to serve other names)",
                                      keep_alive, head);
        } else if (!token_.empty() && !page &&
                   !protocol::bearer_matches(sv(request[http::field::authorization]), token_)) {
            response = error_response(http::status::unauthorized, "invalid_token",
                                      "send 'Authorization: Bearer <token>', the token in the "
                                      "file supervisor.http_token_file names",
                                      keep_alive, head);
            response->set(http::field::www_authenticate, "Bearer");
        } else if (page) {
            response = make_response(http::status::ok, "text/html; charset=utf-8", kStatusPage,
                                     keep_alive, head);
            response->set("Content-Security-Policy",
                          "default-src 'none'; script-src 'unsafe-inline'; style-src "
                          "'unsafe-inline'; connect-src 'self'; img-src data:; "
                          "frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
            response->set("Referrer-Policy", "no-referrer");
            response->set("X-Frame-Options", "DENY");
        } else if (path == "/metrics") {
            response = make_response(http::status::ok, protocol::kPrometheusContentType,
                                     rendering().metrics, keep_alive, head);
        } else if (path == "/api/status") {
            response = make_response(http::status::ok, "application/json", rendering().status_json,
                                     keep_alive, head);
        } else if (path == "/api/events") {
            const auto accept = sv(request[http::field::accept]);
            const auto after = query_number(query, "after");
            const auto lines = query_number(query, "lines");
            if (after == -1 || lines == -1 || (lines && (*lines < 1 || *lines > kMaxEventLines))) {
                response = error_response(
                    http::status::bad_request, "bad_query",
                    "/api/events takes after=ID (events after that one) and lines=1-" +
                        std::to_string(kMaxEventLines) + " (the newest that many)",
                    keep_alive, head);
            } else if (!head && accept.find("text/event-stream") != std::string_view::npos) {
                if (streams_ >= limits_.max_streams) {
                    response = error_response(http::status::service_unavailable, "too_many_streams",
                                              "ensembled already streams events to " +
                                                  std::to_string(limits_.max_streams) +
                                                  " clients; retry shortly",
                                              false, false);
                    response->set(http::field::retry_after, "5");
                } else {
                    // Last-Event-ID: a reconnecting EventSource resumes after what it had.
                    const auto resume =
                        query_number("id=" + std::string(sv(request["Last-Event-ID"])), "id");
                    const std::int64_t cursor = resume && *resume > 0 ? *resume : after.value_or(0);
                    co_await stream_events(*connection, cursor);
                    break;
                }
            } else {
                auto events = fleet_.events(static_cast<int>(lines.value_or(kRecentEvents)),
                                            after.value_or(0));
                response =
                    events
                        ? make_response(http::status::ok, "application/json",
                                        json_text({{"events", to_json(*events)}}), keep_alive, head)
                        : error_response(http::status::internal_server_error, events.error().code,
                                         events.error().message, keep_alive, head);
            }
        } else {
            response = error_response(http::status::not_found, "not_found",
                                      "no such page: try /, /metrics, /api/status or /api/events",
                                      keep_alive, head);
        }
        // A refused request ends its connection: refusals do not hold slots.
        if (response->result_int() >= 400) response->keep_alive(false);
        stream.expires_after(limits_.write_timeout);
        co_await http::async_write(stream, *response, on_error(ec));
        if (ec || !response->keep_alive()) break;
    }
}

awaitable<void> StatusHttp::stream_events(Connection& connection, std::int64_t cursor) {
    ++streams_;
    const OnExit unstream(alive_, [this] { --streams_; });
    auto& stream = connection.stream;
    // A small send buffer: a follower that stops reading fills it within a minute and is
    // dropped, rather than the kernel growing it to megabytes per follower.
    boost::system::error_code ignored;
    stream.socket().set_option(asio::socket_base::send_buffer_size(kStreamSendBuffer), ignored);
    // Close-delimited: the stream's end is the connection's.
    std::string message =
        "HTTP/1.1 200 OK\r\nServer: ensembled\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
        "retry: 2000\n\n";
    boost::system::error_code ec;
    if (const auto& r = rendering(); cursor == 0 && r.recent.size() > kRecentEvents) {
        cursor = r.recent[r.recent.size() - kRecentEvents - 1].first;  // the newest 50 first
    }
    while (!stopped_) {
        const auto& r = rendering();
        if (!r.recent.empty() && cursor > 0 && cursor < r.recent.front().first - 1) {
            // Fell behind what is kept (a burst, or a resume from long ago): say so, and how
            // to read what was skipped.
            message += ": events after " + std::to_string(cursor) +
                       " were skipped here; read them with GET /api/events?after=" +
                       std::to_string(cursor) + "\n\n";
        }
        for (const auto& [id, text] : r.recent) {
            if (id <= cursor) continue;
            message += text;
            cursor = id;
        }
        message += "event: status\ndata: ";
        message += r.status_json;
        message += "\n\n";
        // One message in flight at most: a client that stops reading holds this one until the
        // write times out, and then it is dropped.
        stream.expires_after(limits_.write_timeout);
        co_await asio::async_write(stream, asio::buffer(message), on_error(ec));
        if (ec || stopped_) break;
        message.clear();
        connection.wake.expires_after(limits_.stream_interval);
        co_await connection.wake.async_wait(on_error(ec));
        if (ec) break;
    }
}

}  // namespace ensemble
