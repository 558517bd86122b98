// Asio/Beast names shared by every event loop of Ensemble (C++20 coroutines on one io_context
// thread each: the supervisor's, each worker's).
#pragma once

#include <chrono>
#include <string_view>
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
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
