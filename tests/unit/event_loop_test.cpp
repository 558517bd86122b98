// What every event loop is made with (os/asio.h): where Asio offers it, a short read leaves the
// socket to epoll. That must never lose bytes: those that come after a short read, and those
// that came while no read waited, are still read. Nor a close that came with the last bytes a
// short read took: reads that go on with a message see it (os/stream_reads.h).
#include "os/asio.h"

#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/write.hpp>

#include "os/stream_reads.h"

namespace ensemble {
namespace {

using namespace std::chrono_literals;
using unix_socket = boost::asio::basic_stream_socket<asio::local::stream_protocol, Executor>;

TEST(EventLoop, AShortReadLeavesTheSocketToEpollWhereAsioOffersIt) {
    asio::io_context io(event_loop_config());
#if BOOST_VERSION >= 109000 && defined(BOOST_ASIO_HAS_EPOLL)
    EXPECT_TRUE(asio::config(io).get("reactor", "reset_edge_on_partial_read", false));
    EXPECT_EQ(asio::config(io).get("scheduler", "concurrency_hint", 0), 1);
    EXPECT_TRUE(kDrainedReadsWaitForEpoll);
#else
    EXPECT_FALSE(kDrainedReadsWaitForEpoll);
    GTEST_SKIP() << "Boost " << BOOST_LIB_VERSION
                 << " (or a reactor other than epoll) tries every read at once";
#endif
}

// A connected pair of sockets of each kind the worker reads: TCP (clients) and Unix (engines).
struct Pair {
    std::function<std::size_t(std::string_view)> send;  // from the far end, blocking
    std::function<void(std::span<char>, std::function<void(std::size_t)>)> read;
};

template <typename Socket>
Pair pair_of(Socket& near, Socket& far) {
    return {[&far](std::string_view bytes) { return asio::write(far, asio::buffer(bytes)); },
            [&near](std::span<char> into, std::function<void(std::size_t)> done) {
                near.async_read_some(asio::buffer(into.data(), into.size()),
                                     [done](boost::system::error_code ec, std::size_t n) {
                                         EXPECT_FALSE(ec) << ec.message();
                                         done(n);
                                     });
            }};
}

// Reads once (a short read: fewer bytes than the buffer), then lets `between` run, then reads
// again: what the second read got.
std::string second_read(asio::io_context& io, Pair pair, const std::function<void()>& between) {
    std::array<char, 64> buffer{};
    std::optional<std::size_t> first, second;
    pair.send("hello");
    pair.read(buffer, [&](std::size_t n) { first = n; });
    io.run_for(2s);
    io.restart();
    EXPECT_EQ(first, 5u);
    between();
    pair.read(buffer, [&](std::size_t n) { second = n; });
    io.run_for(2s);  // returns at once when the read completes; a lost edge waits the 2 s out
    return second ? std::string(buffer.data(), *second) : std::string("(nothing read)");
}

template <typename Check>
void on_both_kinds(Check check) {
    {
        asio::io_context io(event_loop_config());
        unix_socket near(io), far(io);
        asio::local::connect_pair(near, far);
        check(io, pair_of(near, far), "Unix");
    }
    {
        asio::io_context io(event_loop_config());
        tcp_acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
        tcp_socket near(io), far(io);
        far.connect(acceptor.local_endpoint());
        acceptor.accept(near);
        check(io, pair_of(near, far), "TCP");
    }
}

TEST(EventLoop, BytesSentAfterAShortReadAreRead) {
    on_both_kinds([](asio::io_context& io, Pair pair, const char* kind) {
        steady_timer later(io);
        const auto got = second_read(io, pair, [&] {
            later.expires_after(20ms);
            later.async_wait([&](boost::system::error_code) { pair.send("world"); });
        });
        EXPECT_EQ(got, "world") << kind;
    });
}

TEST(EventLoop, BytesThatCameWhileNoReadWaitedAreRead) {
    on_both_kinds([](asio::io_context& io, Pair pair, const char* kind) {
        const auto got = second_read(io, pair, [&] {
            pair.send("world");
            // epoll reports the new bytes while no read waits for them
            std::this_thread::sleep_for(20ms);
            io.poll();
            io.restart();
        });
        EXPECT_EQ(got, "world") << kind;
    });
}

// A close that came with the last bytes is taken in by the read that returned them, and is not
// reported again: readers that wait for the end of stream ask peer_closed before they read.
TEST(EventLoop, ACloseThatCameWithTheLastBytesIsSeenByPeerClosed) {
    asio::io_context io(event_loop_config());
    unix_socket near(io), far(io);
    asio::local::connect_pair(near, far);
    EXPECT_FALSE(peer_closed(near.native_handle()));
    asio::write(far, asio::buffer(std::string_view("hello")));
    far.shutdown(unix_socket::shutdown_send);
    EXPECT_FALSE(peer_closed(near.native_handle())) << "bytes wait before the close";
    std::array<char, 64> buffer{};
    std::optional<std::size_t> got;
    near.async_read_some(asio::buffer(buffer), [&](boost::system::error_code ec, std::size_t n) {
        EXPECT_FALSE(ec) << ec.message();
        got = n;
    });
    io.run_for(2s);
    EXPECT_EQ(got, 5u);
    EXPECT_TRUE(peer_closed(near.native_handle()));
}

// The case that needs read_more: a read already waits (the socket drained), then the peer's
// bytes and its close come together, and the read that takes the bytes takes the close's edge
// with them. `sent` arrives so, and then read_http reads on: it must end with the close at once,
// not wait out the stream's 3 s.
struct ReadAfterHiddenClose {
    boost::system::error_code ec;
    std::chrono::steady_clock::duration took{};
    std::string body;
    int status = 0;
};

// `near` reads while `far` sends `sent` and then ends its side with `end` (a close, or a reset).
template <typename Stream, typename Socket>
ReadAfterHiddenClose read_http_after(asio::io_context& io, Stream& near, Socket& far,
                                     std::string_view sent, bool header_only,
                                     const std::function<void()>& end) {
    near.socket().non_blocking(true);
    near.expires_after(3s);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    ReadAfterHiddenClose result;
    bool done = false;
    const auto start = std::chrono::steady_clock::now();
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            co_await read_http(near, buffer, parser, result.ec, PeerSent::nothing_since_we_wrote,
                               header_only);
            done = true;
        },
        asio::detached);
    io.poll();  // the first read waits
    io.restart();
    asio::write(far, asio::buffer(sent));
    end();
    io.run_for(5s);
    EXPECT_TRUE(done);
    result.took = std::chrono::steady_clock::now() - start;
    if (parser.is_header_done()) result.status = parser.get().result_int();
    if (parser.is_done()) result.body = parser.get().body();
    return result;
}

ReadAfterHiddenClose read_http_after_hidden_close(std::string_view sent, bool header_only) {
    asio::io_context io(event_loop_config());
    beast::basic_stream<asio::local::stream_protocol, Executor> near(io.get_executor());
    unix_socket far(io);
    asio::local::connect_pair(near.socket(), far);
    return read_http_after(io, near, far, sent, header_only,
                           [&] { far.shutdown(unix_socket::shutdown_send); });
}

TEST(StreamReads, AHeaderCutShortByACloseThatCameWithItEndsAtOnce) {
    const auto read = read_http_after_hidden_close("HTTP/1.1 200 OK\r\nContent-Le", true);
    EXPECT_EQ(read.ec, http::error::partial_message) << read.ec.message();
    EXPECT_LT(read.took, 1s) << "the read waited for an edge that had come";
}

TEST(StreamReads, AnAnswerThatEndsAtCloseEndsWithTheCloseThatCameWithItsLastBytes) {
    const auto read = read_http_after_hidden_close("HTTP/1.0 200 OK\r\n\r\nhello", false);
    EXPECT_FALSE(read.ec) << read.ec.message();
    EXPECT_EQ(read.status, 200);
    EXPECT_EQ(read.body, "hello");
    EXPECT_LT(read.took, 1s) << "the read waited for an edge that had come";
}

TEST(StreamReads, ABodyCutShortByACloseThatCameWithItEndsAtOnce) {
    const auto read =
        read_http_after_hidden_close("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhel", false);
    EXPECT_EQ(read.ec, http::error::partial_message) << read.ec.message();
    EXPECT_LT(read.took, 1s) << "the read waited for an edge that had come";
}

// A reset is not an end: an answer that ends at close, cut by one, is not taken for whole. (On
// Linux the peek that sees the reset clears it, so it is what must report it.)
TEST(StreamReads, AnAnswerThatEndsAtCloseCutByAResetThatCameWithItsBytesIsNotWhole) {
    asio::io_context io(event_loop_config());
    tcp_acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    tcp_stream near(io.get_executor());
    tcp_socket far(io);
    far.connect(acceptor.local_endpoint());
    acceptor.accept(near.socket());
    const auto read = read_http_after(io, near, far, "HTTP/1.0 200 OK\r\n\r\nhel", false, [&] {
        far.set_option(asio::socket_base::linger(true, 0));
        far.close();
    });
    EXPECT_EQ(read.ec, asio::error::connection_reset) << read.ec.message();
    EXPECT_EQ(read.body, "") << "taken for a whole answer";
    EXPECT_LT(read.took, 1s) << "the read waited for an edge that had come";
}

TEST(StreamReads, APeerThatClosedBeforeAByteIsTheEndOfStream) {
    const auto read = read_http_after_hidden_close("", true);
    EXPECT_EQ(read.ec, http::error::end_of_stream) << read.ec.message();
}

}  // namespace
}  // namespace ensemble
