// Asio/Beast names shared by every event loop of Ensemble (C++20 coroutines on one io_context
// thread each: the supervisor's, each worker's).
#pragma once

#include <chrono>
#include <string_view>
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION >= 109000
#include <boost/asio/config.hpp>
#endif
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>

#include "os/beast_http.h"

namespace ensemble {

namespace asio = boost::asio;
using tcp = boost::asio::ip::tcp;

// Every loop is one io_context, so coroutines, sockets and timers name its executor type instead
// of Asio's default, the type-erased any_io_executor: that one is copied, moved and destroyed
// through a function table several times per asynchronous operation (≈3 % of a worker's CPU per
// proxied request, perf).
using Executor = boost::asio::io_context::executor_type;
template <typename T = void>
using awaitable = boost::asio::awaitable<T, Executor>;
inline constexpr boost::asio::use_awaitable_t<Executor> use_awaitable(0, 0, 0);
using tcp_socket = boost::asio::basic_stream_socket<tcp, Executor>;
using tcp_acceptor = boost::asio::basic_socket_acceptor<tcp, Executor>;
using tcp_stream = boost::beast::basic_stream<tcp, Executor>;
using local_socket =
    boost::asio::basic_stream_socket<boost::asio::local::stream_protocol, Executor>;
using steady_timer = boost::asio::basic_waitable_timer<
    std::chrono::steady_clock, boost::asio::wait_traits<std::chrono::steady_clock>, Executor>;
using signal_set = boost::asio::basic_signal_set<Executor>;

// What each event loop's io_context is made with: one thread runs it. And, where Asio offers it
// (Boost >= 1.90, on epoll), a read that returned fewer bytes than it asked for leaves its socket
// marked drained, so the next read waits for epoll to report new bytes, as nginx and Tokio do.
// Otherwise Asio tries every read at once, and the one after a request or an answer fails with
// EAGAIN: about two failed system calls per proxied request (docs/BENCHMARKS.md, "the worker's
// reads wait for epoll, built in"). Sound for every socket Ensemble reads through Asio (TCP and
// Unix stream sockets that carry no descriptors; those are read directly, os/descriptor_passing.h):
// a short read means the kernel had no more bytes then, and new ones raise a new edge. One
// thing is not raised again: a close that came with the last bytes was taken in by the short
// read, so reads that go on with a message use os/stream_reads.h.
inline auto event_loop_config() {
#if BOOST_VERSION >= 109000
    return boost::asio::config_from_string(
        "scheduler.concurrency_hint=1\nreactor.reset_edge_on_partial_read=1");
#else
    return 1;  // the concurrency hint
#endif
}

// Whether event_loop_config makes a read that drained its socket leave the next one to epoll:
// then a close that came with the drained bytes is not reported again, and reads that go on with
// a message look for one first (os/stream_reads.h). Elsewhere Asio's next read tries at once and
// sees the close itself.
#if BOOST_VERSION >= 109000 && defined(BOOST_ASIO_HAS_EPOLL)
inline constexpr bool kDrainedReadsWaitForEpoll = true;
#else
inline constexpr bool kDrainedReadsWaitForEpoll = false;
#endif

// co_await op(..., on_error(ec)): failures land in `ec` instead of throwing.
inline auto on_error(boost::system::error_code& ec) {
    return boost::asio::redirect_error(use_awaitable, ec);
}

// Calls `handler` on every delivery of the set's signals until the set is cancelled.
template <typename Handler>
void on_every_signal(signal_set& signals, Handler handler) {
    signals.async_wait([&signals, handler](boost::system::error_code ec, int) {
        if (ec) return;
        handler();
        on_every_signal(signals, handler);
    });
}

}  // namespace ensemble
