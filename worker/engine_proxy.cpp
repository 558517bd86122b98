#include "worker/engine_proxy.h"

#include "worker/cors.h"
#include "worker/immediate_io.h"
#include "worker/token_counter.h"

#include <spdlog/spdlog.h>

#include <array>
#include <limits>
#include <optional>

namespace ensemble {

namespace {

constexpr std::size_t kRelayBufferBytes = 16 * 1024;
constexpr std::size_t kEngineRead = 64 * 1024;  // at most, per read of an answer (Beast's)
constexpr auto kConnectTimeout = std::chrono::seconds(5);
constexpr auto kRefusedPause = std::chrono::milliseconds(50);
// How often the relays in flight are looked over: the engine's silence timed, a client's
// departure looked for. A request is first looked at 0-0.1 s after it reached the engine, so most
// short ones never are (a look is a system call); a client that leaves costs the engine at most
// this much more work.
constexpr auto kWatchTick = std::chrono::milliseconds(100);

// Whether an event stream's last event was `data: [DONE]` (OpenAI's end of stream), from the
// bytes as they pass.
class StreamEnd {
  public:
    void feed(std::string_view bytes) {
        tail_.append(bytes);
        if (tail_.size() > 64) tail_.erase(0, tail_.size() - 64);
    }
    bool done() const {
        const auto end = tail_.find_last_not_of(" \r\n");
        return end != std::string::npos &&
               std::string_view(tail_).substr(0, end + 1).ends_with("data: [DONE]");
    }

  private:
    std::string tail_;
};

bool is_event_stream(const http::fields& headers) {
    return sv(headers[http::field::content_type]).starts_with("text/event-stream");
}

const ApiError kEngineClosedEarly{
    http::status::bad_gateway, "server_error", "engine_error",
    "the engine closed the connection without answering; retry the request"};

ApiError engine_silent(std::chrono::seconds timeout) {
    return {http::status::gateway_timeout, "server_error", "engine_timeout",
            "the engine went " + std::to_string(timeout.count()) +
                " s without sending anything (the worker's --engine-timeout); it may be "
                "overloaded or stuck: retry later"};
}

}  // namespace

// One relay's entry with the watchdog, for as long as the relay runs.
class EngineProxy::RelayWatch {
  public:
    RelayWatch(const std::shared_ptr<Watchdog>& watchdog, stream_connection& engine)
        : watchdog_(watchdog),
          at_(watchdog->relays.insert(watchdog->relays.end(), WatchedRelay{})) {
        at_->engine = &engine;
        if (!watchdog_->ticking) {
            watchdog_->ticking = true;
            asio::co_spawn(engine.get_executor(), watch_relays(watchdog_), asio::detached);
        }
    }
    ~RelayWatch() { watchdog_->relays.erase(at_); }
    RelayWatch(const RelayWatch&) = delete;
    RelayWatch& operator=(const RelayWatch&) = delete;

    // The request is on its way to the engine: its client is watched from the next tick. (Not
    // before: an attempt whose send failed, on a stale pooled connection, is tried again at
    // once, and a departure seen then would be lost with it.)
    void watch_client(tcp_socket& client) { at_->client = &client; }
    bool client_left() const { return at_->client_left; }

    // The engine spoke (a read succeeded): the silence starts again.
    void heard() {
        at_->last_heard = std::chrono::steady_clock::now();
        at_->timed_out = false;
    }
    // Waiting on the client (a slow reader) is not the engine's silence; heard() resumes it.
    void pause() { at_->last_heard = std::chrono::steady_clock::time_point::max(); }
    bool timed_out() const { return at_->timed_out; }

  private:
    std::shared_ptr<Watchdog> watchdog_;
    std::list<WatchedRelay>::iterator at_;
};

awaitable<void> EngineProxy::watch_relays(std::shared_ptr<Watchdog> watchdog) {
    steady_timer tick(co_await asio::this_coro::executor);
    while (!watchdog->relays.empty()) {
        tick.expires_after(kWatchTick);
        boost::system::error_code ec;
        co_await tick.async_wait(on_error(ec));
        const auto now = std::chrono::steady_clock::now();
        for (auto& relay : watchdog->relays) {
            // A client that goes away (end of stream or reset) gets its engine connection
            // cancelled and then closed, and the engine stops generating for nobody:
            // llama-server checks a waiting request's connection about once a second, and a
            // stream's next write fails. A client that sent more (a pipelined request) is
            // still there. (A socket a drain has closed is not a departure.) Whichever the
            // relay waits on ends: the engine's read, or a write to a client that left
            // without reading.
            if (relay.client != nullptr && !relay.client_left && relay.client->is_open() &&
                peer_closed(*relay.client)) {
                relay.client_left = true;
                relay.engine->socket().cancel(ec);
                relay.client->cancel(ec);  // during a relay, only its own write can be pending
            }
            if (relay.timed_out || relay.last_heard > now ||
                now - relay.last_heard < watchdog->engine_timeout)
                continue;
            relay.timed_out = true;
            relay.engine->socket().cancel(ec);  // its read or write ends: operation_aborted
        }
    }
    watchdog->ticking = false;
}

std::unique_ptr<EngineProxy::Connection> EngineProxy::take_idle() {
    while (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        // A connection the engine closed meanwhile fails on use, and the request is retried on
        // a fresh one (see forward): no probe per request.
        if (c->generation == engine_.generation()) {
            c->reused = true;
            return c;
        }
    }
    return nullptr;
}

awaitable<std::unique_ptr<EngineProxy::Connection>> EngineProxy::connect_new() {
    auto executor = co_await asio::this_coro::executor;
    auto c = std::make_unique<Connection>(
        Connection{stream_connection(executor), {}, engine_.generation()});
    // Beast reads as much as the buffer's free capacity (512 bytes at least): an empty buffer
    // took an answer's header and body in 512-byte reads, each a syscall and a write.
    c->buffer.reserve(kRelayBufferBytes);
    c->stream.expires_after(kConnectTimeout);
    const auto engine_endpoint = engine_.endpoint();  // the engine may restart meanwhile
    const auto ec = co_await connect(c->stream, engine_endpoint);
    if (ec) co_return nullptr;
    c->stream.expires_never();  // the engine's silence is timed per answer (RelayWatch)
    boost::system::error_code mode_ec;
    c->stream.socket().non_blocking(true, mode_ec);  // for OutgoingMessage::send_now
    co_return c;
}

void EngineProxy::release(std::unique_ptr<Connection> connection) {
    // Bytes after a complete answer would be read as the next request's answer: not reused.
    if (connection->generation != engine_.generation() ||
        idle_.size() >= limits_.max_idle_connections || connection->buffer.size() > 0)
        return;
    connection->stream.expires_never();
    idle_.push_back(std::move(connection));
}

awaitable<bool> EngineProxy::send_error(tcp_stream& client, const http::request_header<>& request,
                                        const ApiError& error, bool keep_alive,
                                        RequestTrace& trace) {
    ++stats_.failed;
    trace.status = static_cast<unsigned>(error.status);
    auto res = trace.filter != nullptr ? trace.filter->error_response(error, keep_alive)
                                       : make_error_response(error, keep_alive);
    if (trace.filter == nullptr) cors::allow_origin(request, res);  // (Ollama's: none)
    boost::system::error_code ec;
    co_await send_message(client, res, limits_.send_timeout, ec);
    co_return keep_alive && !ec;
}

EngineProxy::Outcome EngineProxy::client_left(const http::request<http::string_body>& request) {
    ++stats_.abandoned;
    spdlog::info("proxy: the client of {} went away; its engine request is cancelled",
                 sv(request.target()));
    return Outcome::done_close;
}

EngineProxy::Outcome EngineProxy::client_stopped_reading(
    const http::request<http::string_body>& request) {
    ++stats_.abandoned;
    spdlog::info(
        "proxy: a write to the client of {} could not go on for {} s (--send-timeout): it reads "
        "too little of its answer, or none; "
        "its connection is closed and its engine request cancelled",
        sv(request.target()), limits_.send_timeout.count());
    return Outcome::done_close;
}

awaitable<bool> EngineProxy::engine_died_recently() {
    steady_timer pause(co_await asio::this_coro::executor);
    for (int i = 0; i < 20; ++i) {
        engine_.on_child_exit();
        if (!engine_.ready()) co_return true;
        pause.expires_after(std::chrono::milliseconds(5));
        boost::system::error_code ec;
        co_await pause.async_wait(on_error(ec));
    }
    co_return false;
}

awaitable<bool> EngineProxy::forward(tcp_stream& client, http::request<http::string_body>& request,
                                     RequestTrace& trace) {
    ++stats_.requests;
    ++stats_.active;
    struct Finished {
        std::uint64_t& active;
        ~Finished() { --active; }
    } finished{stats_.active};
    const bool keep_alive = request.keep_alive();
    // Nothing has reached the client until the engine answers, so a request can be tried again:
    // on a fresh connection when a pooled one turns out stale, and up to kEngineAttempts times
    // when the engine itself died before answering (generation has no side effects until then).
    constexpr int kEngineAttempts = 3;
    bool fresh_only = false;
    for (int failures = 0; failures < kEngineAttempts;) {
        if (!engine_.ready()) {
            const auto deadline = ProxyTarget::Clock::now() + limits_.queue_timeout;
            if (!co_await engine_.wait_ready(deadline)) break;
        }
        auto connection = fresh_only ? nullptr : take_idle();
        if (!connection) connection = co_await connect_new();
        if (!connection) {
            // Refused: the engine probably just died; reap it, or give it a moment.
            engine_.on_child_exit();
            ++failures;
            steady_timer pause(co_await asio::this_coro::executor, kRefusedPause);
            boost::system::error_code ec;
            co_await pause.async_wait(on_error(ec));
            continue;
        }
        const auto outcome = co_await relay(client, *connection, request, keep_alive, trace);
        switch (outcome) {
            case Outcome::done_keep_alive:
                release(std::move(connection));
                co_return keep_alive;
            case Outcome::done_close:
                co_return false;
            case Outcome::done_engine_closed:
                co_return keep_alive;
            case Outcome::retry:
                if (connection->reused) {
                    fresh_only = true;
                } else {
                    ++failures;
                }
                continue;
            case Outcome::engine_silent: {
                const auto error = engine_silent(limits_.engine_timeout);
                const bool kept = co_await send_error(client, request, error, keep_alive, trace);
                co_return kept;
            }
            case Outcome::failed_before_response: {
                // A reset often comes a moment before the dying engine can be reaped: if it
                // turns out dead, the request waits for the restart like any other.
                if (co_await engine_died_recently()) {
                    ++failures;
                    continue;
                }
                const bool kept =
                    co_await send_error(client, request, kEngineClosedEarly, keep_alive, trace);
                co_return kept;
            }
        }
    }
    // No temporaries inside co_await expressions: GCC 12 may destroy them twice.
    const auto error = engine_.unavailable();
    const bool kept = co_await send_error(client, request, error, keep_alive, trace);
    co_return kept;
}

awaitable<EngineProxy::Outcome> EngineProxy::relay(tcp_stream& client, Connection& engine,
                                                   http::request<http::string_body>& request,
                                                   bool client_keep_alive, RequestTrace& trace) {
    boost::system::error_code ec;
    RelayWatch watch(watchdog_, engine.stream);
    OutgoingMessage to_engine(forwarded_header(request, engine_.endpoint().host(),
                                               request.body().size(), limits_.keep_authorization),
                              false);
    const std::string_view request_body = request.body();
    if (!to_engine.send_now(engine.stream, request_body, true, ec))
        co_await to_engine.send_rest(engine.stream, ec);
    if (!ec) watch.watch_client(client.socket());
    // A write to the client failed: it left, a departure seen while the write waited ended it,
    // or it could not go on for send_timeout (the client reads too little). The engine side is
    // dropped.
    const auto client_write_failed = [&] {
        if (watch.client_left()) return client_left(request);
        if (ec == beast::error::timeout) return client_stopped_reading(request);
        return Outcome::done_close;
    };
    // Interim answers (1xx, such as 103 Early Hints) come before the answer and end at their
    // header: each is read and left (RFC 9110 15.2), and the answer is read after them.
    std::optional<http::response_parser<http::buffer_body>> parsed;
    auto engine_sent = PeerSent::nothing_since_we_wrote;
    do {
        parsed.emplace();
        parsed->body_limit(std::numeric_limits<std::uint64_t>::max());  // the engine is trusted
        if (!ec && !watch.client_left())
            co_await read_http(engine.stream, engine.buffer, *parsed, ec, engine_sent,
                               /*header_only=*/true);
        engine_sent = PeerSent::maybe;
    } while (!ec && !watch.client_left() && parsed->get().result_int() / 100 == 1);
    auto& parser = *parsed;
    if (watch.client_left()) co_return client_left(request);
    if (ec && watch.timed_out()) {
        spdlog::warn("proxy: the engine went {} s without sending anything for {}; answering 504",
                     limits_.engine_timeout.count(), sv(request.target()));
        co_return Outcome::engine_silent;
    }
    if (ec) {
        // Nothing reached the client yet, so the request can safely be tried again: either the
        // pooled connection had gone stale, or the engine died and is being restarted.
        // The engine may have died a moment ago with SIGCHLD not yet handled: reap it now.
        engine_.on_child_exit();
        const bool engine_died = !engine_.ready() || engine.generation != engine_.generation();
        if (engine.reused || engine_died) co_return Outcome::retry;
        spdlog::warn("proxy: engine failed before answering {}: {}", sv(request.target()),
                     ec.message());
        co_return Outcome::failed_before_response;
    }

    engine_.note_answer();
    watch.heard();
    auto& response = parser.get();
    const bool engine_keep_alive = parser.keep_alive();
    const bool event_stream = is_event_stream(response);
    // 204 and 304 answers never have a body (RFC 9110 6.4.1): they go on as they came, neither
    // chunked nor given a body by the filter (a last chunk would be read as the start of the
    // next answer).
    const bool bodiless = response.result() == http::status::no_content ||
                          response.result() == http::status::not_modified;
    // A body that ends when the engine closes the connection (HTTP/1.0, as mlx_lm.server
    // speaks) is passed on chunked, so the client's connection outlives the engine's.
    const bool ends_at_close = !bodiless && !parser.chunked() && !parser.content_length();
    auto* const filter = bodiless ? nullptr : trace.filter;
    if (filter != nullptr) filter->begin(response.base(), event_stream);
    // A body whose length is not known ahead goes in chunks; to an HTTP/1.0 client, which cannot
    // take them (RFC 9112 6.1), it ends with the connection (which the listener ends after
    // every answer to such a client).
    const bool length_unknown =
        !bodiless && (parser.chunked() || ends_at_close || filter != nullptr);
    const auto framing = !length_unknown           ? BodyFraming::as_engine
                         : request.version() >= 11 ? BodyFraming::chunked
                                                   : BodyFraming::until_close;
    const bool chunked = framing == BodyFraming::chunked;
    trace.status = response.result_int();
    TokenCounter tokens(event_stream);
    StreamEnd stream_end;
    OutgoingMessage answer(relayed_header(response.base(), framing, client_keep_alive), chunked);
    answer.limit_waits(limits_.send_timeout);
    // An event stream's header goes out at once (its first event may be a long prompt away);
    // any other answer's header leaves with its first bytes, in one write.
    if (event_stream) {
        watch.pause();
        constexpr std::string_view kNothingYet;
        co_await answer.send(client, kNothingYet, false, ec);
        if (ec) co_return client_write_failed();
        watch.heard();
    }

    std::array<char, kRelayBufferBytes> chunk;  // not zeroed: only what is read is sent
    std::string filtered;  // what the filter makes of the chunk, when there is one
    while (!parser.is_done()) {
        if (watch.client_left()) break;  // seen while the relay waited on the client
        response.body().data = chunk.data();
        response.body().size = chunk.size();
        // What the engine has already sent (often the whole answer, read with its header) is
        // relayed at once; only an empty buffer waits for the engine.
        if (parse_buffered(parser, engine.buffer, ec) == 0 && !ec) {
            // (The answer goes on: os/stream_reads.h.)
            const auto into = engine.buffer.prepare(beast::read_size(engine.buffer, kEngineRead));
            const auto n = co_await read_more(engine.stream, into, ec);
            engine.buffer.commit(n);
            if (ec == asio::error::eof) {
                ec = {};
                parser.put_eof(ec);  // ends an answer that ends at close, cuts any other
            } else if (!ec) {
                watch.heard();
                parse_buffered(parser, engine.buffer, ec);
            }
        }
        if (ec == http::error::need_buffer) ec = {};
        if (ec) break;
        std::string_view part(chunk.data(), chunk.size() - response.body().size);
        if (!part.empty()) engine_.note_answer();
        tokens.feed(part);
        const bool first_token = event_stream && !trace.first_token && tokens.content_events() > 0;
        // An event stream ended by the engine closing its connection before `data: [DONE]` was
        // cut short by the engine's death, not finished: keep the client's stream open for the
        // error event below. (Only such a stream's end is looked at.)
        const bool close_delimited_stream = ends_at_close && event_stream;
        if (close_delimited_stream) stream_end.feed(part);
        const bool cut = parser.is_done() && close_delimited_stream && !stream_end.done();
        if (filter != nullptr) {
            filtered = filter->feed(part);
            if (parser.is_done() && !cut) filtered += filter->finish();
            part = filtered;
        }
        const bool last = parser.is_done() && !cut;
        if (!part.empty() || last) {
            watch.pause();
            if (!answer.send_now(client, part, last, ec)) co_await answer.send_rest(client, ec);
            if (ec) co_return client_write_failed();
            watch.heard();
            if (first_token) trace.first_token = RequestTrace::Clock::now() - trace.began;
        }
        if (cut) {
            ec = asio::error::eof;
            break;
        }
    }
    stats_.tokens += tokens.tokens();
    trace.prompt_tokens = tokens.prompt_tokens();
    if (watch.client_left() && !answer.done()) co_return client_left(request);
    if (!ec && !answer.done()) {  // an empty body: only the header is left to send
        filtered = filter != nullptr ? filter->finish() : std::string();
        const std::string_view rest = filtered;
        co_await answer.send(client, rest, true, ec);
        if (ec) co_return client_write_failed();
    }
    if (!ec) {
        if (engine_keep_alive && !ends_at_close) co_return Outcome::done_keep_alive;
        co_return client_keep_alive ? Outcome::done_engine_closed : Outcome::done_close;
    }

    // The engine went away mid-response. Before anything reached the client, this is a failure
    // before the response (retried, or answered 502). A chunked event stream can still end
    // cleanly with an error event; any other body can only be cut short by closing the connection.
    if (!answer.header_sent()) {
        if (watch.timed_out()) co_return Outcome::engine_silent;
        engine_.on_child_exit();
        co_return Outcome::failed_before_response;
    }
    ++stats_.streams_cut;
    if (watch.timed_out()) {
        spdlog::warn(
            "proxy: the engine went {} s without sending anything in the middle of an answer "
            "to {}; ending the client's response",
            limits_.engine_timeout.count(), sv(request.target()));
    } else {
        spdlog::warn(
            "proxy: engine connection lost mid-response ({}); ending the client's response",
            ec.message());
    }
    if (event_stream && framing != BodyFraming::as_engine) {
        // (A close-delimited stream was framed above, so it ends cleanly too.)
        const auto error =
            watch.timed_out() ? engine_silent(limits_.engine_timeout)
                              : ApiError{http::status::bad_gateway, "server_error", "engine_failed",
                                         "the engine stopped while generating; the worker is "
                                         "restarting it: retry the request"};
        // (A filter that has ended its answer has nothing left: then only the last chunk.)
        const auto event = filter != nullptr ? filter->cut(error) : error.sse_event();
        const std::string_view last_event = event;
        co_await answer.send(client, last_event, true, ec);
    }
    co_return Outcome::done_close;
}

}  // namespace ensemble
