// Asio/Beast names shared by every event loop of Ensemble (C++20 coroutines on one io_context
// thread each: the supervisor's, each worker's).
#pragma once

#include <string_view>
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>

#include "os/beast_http.h"

namespace ensemble {

namespace asio = boost::asio;
using tcp = boost::asio::ip::tcp;
template <typename T = void>
using awaitable = boost::asio::awaitable<T>;
using boost::asio::use_awaitable;

// co_await op(..., on_error(ec)): failures land in `ec` instead of throwing.
inline auto on_error(boost::system::error_code& ec) {
    return boost::asio::redirect_error(boost::asio::use_awaitable, ec);
}

// Calls `handler` on every delivery of the set's signals until the set is cancelled.
template <typename Handler>
void on_every_signal(boost::asio::signal_set& signals, Handler handler) {
    signals.async_wait([&signals, handler](boost::system::error_code ec, int) {
        if (ec) return;
        handler();
        on_every_signal(signals, handler);
    });
}

}  // namespace ensemble
