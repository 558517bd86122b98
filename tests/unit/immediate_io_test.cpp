// The worker's in-place HTTP reads and writes (worker/immediate_io.h): what is buffered is parsed
// without waiting, a pipelined request stays for its turn, and a write the socket cannot take at
// once finishes asynchronously without stalling the event loop.
#include "worker/immediate_io.h"

#include "worker/appending_string_body.h"

#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>

namespace ensemble {
namespace {

using namespace std::chrono_literals;
using local_stream = beast::basic_stream<asio::local::stream_protocol, Executor>;

void fill(beast::flat_buffer& buffer, std::string_view bytes) {
    const auto n = asio::buffer_copy(buffer.prepare(bytes.size()), asio::buffer(bytes));
    buffer.commit(n);
}

const std::string kRequest =
    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}";

TEST(ParseBuffered, AWholeRequestIsParsedAndAPipelinedOneStaysInTheBuffer) {
    beast::flat_buffer buffer;
    fill(buffer, kRequest + kRequest);
    http::request_parser<http::string_body> parser;
    parser.eager(true);
    boost::system::error_code ec;
    EXPECT_EQ(parse_buffered(parser, buffer, ec), kRequest.size());
    EXPECT_FALSE(ec) << ec.message();
    ASSERT_TRUE(parser.is_done());
    EXPECT_EQ(parser.get().body(), "{\"a\":1}");
    EXPECT_EQ(beast::buffers_to_string(buffer.data()), kRequest);
}

TEST(ParseBuffered, APartOfARequestLeavesTheRestToBeRead) {
    for (const std::size_t cut : {std::size_t{10}, kRequest.size() - 3}) {
        beast::flat_buffer buffer;
        fill(buffer, std::string_view(kRequest).substr(0, cut));
        http::request_parser<http::string_body> parser;
        parser.eager(true);
        boost::system::error_code ec;
        parse_buffered(parser, buffer, ec);
        EXPECT_FALSE(ec) << cut << ": " << ec.message();  // need_more is no error
        EXPECT_FALSE(parser.is_done()) << cut;
        EXPECT_EQ(parser.is_header_done(), cut > 10) << cut;
    }
}

TEST(ParseBuffered, ABadRequestAndAnOversizedBodyAreErrors) {
    beast::flat_buffer buffer;
    fill(buffer, "GARBAGE\x01 / HTTP/9.9\r\n\r\n");
    http::request_parser<http::string_body> parser;
    boost::system::error_code ec;
    parse_buffered(parser, buffer, ec);
    EXPECT_TRUE(ec);

    beast::flat_buffer second;
    fill(second, kRequest);
    http::request_parser<http::string_body> limited;
    limited.eager(true);
    limited.body_limit(3);
    parse_buffered(limited, second, ec);
    EXPECT_EQ(ec, http::error::body_limit);
}

// An engine's chunked answer, already whole in the buffer, relayed through a small buffer_body
// chunk as the proxy does: every body byte comes out in order, need_buffer marks a full chunk.
// The listener's body type: the same bodies as Beast's string_body, in parts, sized or chunked,
// and the same limit.
TEST(AppendingStringBody, ReadsWhatStringBodyReadsInAnyPartsWithinTheSameLimit) {
    const std::string chunked =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
    for (const auto& whole : {kRequest, chunked}) {
        for (std::size_t part = 1; part <= whole.size(); ++part) {
            http::request_parser<AppendingStringBody> parser;
            beast::flat_buffer buffer;  // what the parser leaves waits for the next part
            boost::system::error_code ec;
            for (std::size_t at = 0; at < whole.size() && !ec; at += part) {
                fill(buffer, std::string_view(whole).substr(at, part));
                parse_buffered(parser, buffer, ec);
            }
            ASSERT_FALSE(ec) << part << ": " << ec.message();
            ASSERT_TRUE(parser.is_done()) << part;
            const auto request = to_string_body(parser.release());
            EXPECT_EQ(request.body(), "{\"a\":1}") << part;
            EXPECT_EQ(request.target(), "/v1/chat/completions");
        }
        beast::flat_buffer buffer;
        fill(buffer, whole);
        http::request_parser<AppendingStringBody> limited;
        limited.body_limit(3);
        boost::system::error_code ec;
        parse_buffered(limited, buffer, ec);
        EXPECT_EQ(ec, http::error::body_limit);
    }
}

TEST(ParseBuffered, AChunkedAnswerInTheBufferComesOutThroughASmallBodyBuffer) {
    const std::string answer =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        "d\r\ndata: first\n\n\r\n"
        "e\r\ndata: second\n\n\r\n"
        "0\r\n\r\n";
    beast::flat_buffer buffer;
    fill(buffer, answer);
    http::response_parser<http::buffer_body> parser;
    boost::system::error_code ec;
    parse_buffered(parser, buffer, ec);  // the header; the body waits for a buffer
    ASSERT_EQ(ec, http::error::need_buffer) << ec.message();
    ASSERT_TRUE(parser.is_header_done());
    std::string body;
    std::array<char, 5> chunk{};
    for (int turns = 0; !parser.is_done() && turns < 100; ++turns) {
        parser.get().body().data = chunk.data();
        parser.get().body().size = chunk.size();
        const auto used = parse_buffered(parser, buffer, ec);
        if (ec == http::error::need_buffer) ec = {};
        ASSERT_FALSE(ec) << ec.message();
        ASSERT_TRUE(used > 0 || parser.is_done()) << "stuck with " << buffer.size() << " bytes";
        body.append(chunk.data(), chunk.size() - parser.get().body().size);
    }
    EXPECT_TRUE(parser.is_done());
    EXPECT_EQ(body, "data: first\n\ndata: second\n\n");
    EXPECT_EQ(buffer.size(), 0U);
}

// A body of declared length larger than a read, and a chunked one, sent in parts by a writer on
// the same event loop, arrive whole; one cut short is a partial message. The plain blocks noted
// of a body of declared length, part by part, are those of the whole body.
TEST(ReadRequestBody, ALargeBodyArrivesWholeAndOneCutShortIsAPartialMessage) {
    std::string body(3 << 20, 'x');
    for (std::size_t i = 0; i < body.size(); i += 4093)
        body[i] = static_cast<char>('a' + i % 26);
    for (std::size_t i = 0; i < body.size(); i += 10007)
        body[i] = '"';
    PlainBlocks whole_body;
    whole_body.extend(body);
    const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
    const std::string sized = head + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    const std::string chunked = head + "Transfer-Encoding: chunked\r\n\r\n100000\r\n" +
                                body.substr(0, 1 << 20) + "\r\n200000\r\n" + body.substr(1 << 20) +
                                "\r\n0\r\n\r\n";
    const std::vector<std::pair<std::string, bool>> cases = {
        {sized + body, false},
        {sized + body.substr(0, body.size() / 2), true},
        {chunked, false},
        {chunked.substr(0, chunked.size() / 2), true}};
    for (const auto& [sent, cut_short] : cases) {
        asio::io_context io(1);
        local_socket a(io), b(io);
        asio::local::connect_pair(a, b);
        local_stream reader(std::move(b));
        asio::co_spawn(
            io,
            [&]() -> awaitable<void> {
                boost::system::error_code ignored;
                co_await asio::async_write(a, asio::buffer(sent), on_error(ignored));
                a.shutdown(asio::socket_base::shutdown_send, ignored);
            },
            asio::detached);
        http::request_parser<AppendingStringBody> parser;
        parser.body_limit(body.size());
        beast::flat_buffer buffer;
        boost::system::error_code ec;
        PlainBlocks plain;
        asio::co_spawn(
            io,
            [&]() -> awaitable<void> {
                co_await http::async_read_header(reader, buffer, parser, on_error(ec));
                if (!ec) co_await read_request_body(reader, buffer, parser, plain, ec);
            },
            asio::detached);
        io.run();
        const auto what = sent.substr(0, 60) + "... (" + std::to_string(sent.size()) + " bytes)";
        if (cut_short) {
            EXPECT_EQ(ec, http::error::partial_message) << what << ": " << ec.message();
            continue;
        }
        ASSERT_FALSE(ec) << what << ": " << ec.message();
        const auto request = to_string_body(parser.release());
        EXPECT_TRUE(request.body() == body) << what << ": " << request.body().size() << " bytes";
        const bool sized_body = sent.starts_with(sized);
        std::size_t differing = 0;
        for (std::size_t block = 0; block < body.size() / PlainBlocks::kBlock; ++block)
            differing += plain.plain(block) != (sized_body && whole_body.plain(block)) ? 1 : 0;
        EXPECT_EQ(differing, 0U) << what;
    }
}

// A client that declares a large body and sends little of it holds memory for what it sent, not
// for what it declared (the string is sized as bytes arrive).
TEST(ReadRequestBody, ADeclaredLengthIsNotMemoryUntilItsBytesArrive) {
    asio::io_context io(1);
    local_socket a(io), b(io);
    asio::local::connect_pair(a, b);
    local_stream reader(std::move(b));
    const std::string sent =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 33554432\r\n\r\n"
        "{\"model\":";
    asio::write(a, asio::buffer(sent));
    http::request_parser<AppendingStringBody> parser;
    parser.body_limit(64 << 20);
    beast::flat_buffer buffer;
    boost::system::error_code ec;
    bool finished = false;
    PlainBlocks plain;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            co_await http::async_read_header(reader, buffer, parser, on_error(ec));
            if (!ec) co_await read_request_body(reader, buffer, parser, plain, ec);
            finished = true;
        },
        asio::detached);
    for (int turns = 0; turns < 100; ++turns)
        io.poll();
    ASSERT_FALSE(finished) << ec.message();
    EXPECT_LE(parser.get().body().size(), std::size_t{64 * 1024 + 16});
    a.close();  // the client gives up
    io.run();
    EXPECT_EQ(ec, http::error::partial_message) << ec.message();
    EXPECT_EQ(parser.get().body(), "{\"model\":");
}

// The drain's two looks at an idle kept-alive connection (HttpListener::drain): neither reads,
// so a request found waiting is still there for the connection's own read.
TEST(PeekAtPeer, BytesWaitingAndAClosedPeerAreSeenWithoutTakingAByte) {
    asio::io_context io(1);
    tcp_acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
    tcp_socket client(io), served(io);
    client.connect(acceptor.local_endpoint());
    acceptor.accept(served);

    EXPECT_FALSE(bytes_waiting(served)) << "nothing sent yet";
    EXPECT_FALSE(peer_closed(served));

    asio::write(client, asio::buffer(kRequest));
    for (int i = 0; i < 100 && served.available() < kRequest.size(); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(bytes_waiting(served));
    EXPECT_FALSE(peer_closed(served)) << "a request waiting is not a peer that left";
    EXPECT_EQ(served.available(), kRequest.size()) << "the peeks took none of it";

    std::string request(kRequest.size(), '\0');
    asio::read(served, asio::buffer(request));
    client.close();
    bool closed = false;
    for (int i = 0; i < 100 && !(closed = peer_closed(served)); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(closed) << "the client closed its side";
    EXPECT_FALSE(bytes_waiting(served));
}

// A small answer into an empty socket buffer is written in place: the coroutine finishes in the
// one event-loop turn that starts it (an asynchronous write would need a second).
TEST(SendMessage, ASmallAnswerIsWrittenWithoutAnotherTurnOfTheLoop) {
    asio::io_context io(1);
    local_socket a(io), b(io);
    asio::local::connect_pair(a, b);
    a.non_blocking(true);
    local_stream writer(std::move(a));
    http::response<http::string_body> response{http::status::ok, 11};
    response.body() = "{\"ok\":true}";
    response.prepare_payload();
    boost::system::error_code ec;
    bool written = false;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            co_await send_message(writer, response, kDefaultSendTimeout, ec);
            written = true;
        },
        asio::detached);
    io.poll_one();  // starts the coroutine
    EXPECT_TRUE(written);
    EXPECT_FALSE(ec) << ec.message();
    io.poll();
    std::array<char, 256> received{};
    const auto n = b.read_some(asio::buffer(received));
    EXPECT_NE(std::string_view(received.data(), n).find("{\"ok\":true}"), std::string_view::npos);
}

// An answer sent in parts, as the proxy relays an engine's: chunked, each non-empty part is one
// chunk and the last ends it (an empty part between sends nothing); sized, the parts go out as
// they are. What arrives is the message Beast reads, the header sent once.
TEST(OutgoingMessage, PartsGoOutAsChunksOrAsTheyAreAndTheHeaderOnce) {
    for (const bool chunked : {true, false}) {
        asio::io_context io(1);
        local_socket a(io), b(io);
        asio::local::connect_pair(a, b);
        a.non_blocking(true);
        local_stream writer(std::move(a));
        http::response<http::buffer_body> response{http::status::ok, 11};
        response.set(http::field::content_type, "text/event-stream");
        if (chunked) {
            response.chunked(true);
        } else {
            response.content_length(11);
        }
        boost::system::error_code ec;
        asio::co_spawn(
            io,
            [&]() -> awaitable<void> {
                OutgoingMessage answer(response);
                EXPECT_FALSE(answer.header_sent());
                for (const std::string_view part : {"", "data", "", " [DONE]"})
                    co_await answer.send(writer, part, false, ec);
                EXPECT_TRUE(answer.header_sent());
                EXPECT_FALSE(answer.done());
                constexpr std::string_view kEnd;
                co_await answer.send(writer, kEnd, true, ec);
                EXPECT_TRUE(answer.done());
            },
            asio::detached);
        io.run();
        ASSERT_FALSE(ec) << ec.message();
        std::array<char, 512> received{};
        const auto n = b.read_some(asio::buffer(received));
        const std::string_view bytes(received.data(), n);
        const auto body_at = bytes.find("\r\n\r\n") + 4;
        EXPECT_EQ(bytes.substr(body_at),
                  chunked ? "4\r\ndata\r\n7\r\n [DONE]\r\n0\r\n\r\n" : "data [DONE]")
            << bytes;
        http::response_parser<http::string_body> parser;
        parser.eager(true);
        parser.put(asio::buffer(bytes.data(), n), ec);
        EXPECT_FALSE(ec) << ec.message() << "\n" << bytes;
        EXPECT_TRUE(parser.is_done()) << bytes;
        EXPECT_EQ(parser.get().body(), "data [DONE]");
    }
}

// A slow reader: waits 50 ms, so that a large write cannot finish at once, then reads an answer
// of up to 8 MiB into `received`.
awaitable<void> read_after_a_pause(local_stream& reader,
                                   std::optional<http::response<http::string_body>>& received) {
    steady_timer pause(reader.get_executor(), 50ms);
    boost::system::error_code ec;
    co_await pause.async_wait(on_error(ec));
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::size_t{8} << 20);
    co_await http::async_read(reader, buffer, parser, on_error(ec));
    if (!ec) received = parser.release();
}

// A chunked answer whose first part the socket cannot take at once (the reader waits), then a
// last part that is not empty; and a chunked answer with no body at all. Each arrives as the
// message Beast reads: the rest of a chunk goes before the next one, the last part is a chunk
// followed by the last chunk.
TEST(OutgoingMessage, APartLeftForLaterGoesBeforeTheNextAndALastPartIsAChunkToo) {
    const std::string big(std::size_t{2} << 20, 'x');
    for (const bool with_body : {true, false}) {
        asio::io_context io(1);
        local_socket a(io), b(io);
        asio::local::connect_pair(a, b);
        a.non_blocking(true);
        local_stream writer(std::move(a)), reader(std::move(b));
        http::response<http::buffer_body> response{http::status::ok, 11};
        response.chunked(true);
        boost::system::error_code write_ec;
        asio::co_spawn(
            io,
            [&]() -> awaitable<void> {
                OutgoingMessage answer(response);
                const std::string_view first = with_body ? std::string_view(big) : "";
                const std::string_view last = with_body ? "tail" : "";
                co_await answer.send(writer, first, false, write_ec);
                co_await answer.send(writer, last, true, write_ec);
            },
            asio::detached);
        std::optional<http::response<http::string_body>> received;
        asio::co_spawn(io, read_after_a_pause(reader, received), asio::detached);
        io.run_for(20s);
        EXPECT_FALSE(write_ec) << write_ec.message();
        ASSERT_TRUE(received) << "with_body " << with_body;
        EXPECT_TRUE(received->body() == (with_body ? big + "tail" : "")) << with_body;
    }
}

// A writer with a 4 MiB answer against a reader that waits before reading: the write cannot
// finish at once, so it must yield to the event loop (the reader runs on the same thread; a write
// that blocked would never finish) and still deliver every byte, in either socket mode.
TEST(SendMessage, AWriteTheSocketCannotTakeAtOnceFinishesWithoutStallingTheLoop) {
    for (const bool non_blocking : {true, false}) {
        asio::io_context io(1);
        local_socket a(io), b(io);
        asio::local::connect_pair(a, b);
        a.non_blocking(non_blocking);
        local_stream writer(std::move(a)), reader(std::move(b));

        http::response<http::string_body> response{http::status::ok, 11};
        response.body() = std::string(std::size_t{4} << 20, 'x');
        for (std::size_t i = 0; i < response.body().size(); i += 4099)
            response.body()[i] = static_cast<char>('a' + i % 26);
        response.prepare_payload();
        const std::string expected = response.body();

        boost::system::error_code write_ec;
        bool written = false;
        asio::co_spawn(
            io,
            [&]() -> awaitable<void> {
                co_await send_message(writer, response, kDefaultSendTimeout, write_ec);
                written = true;
            },
            asio::detached);

        std::optional<http::response<http::string_body>> received;
        asio::co_spawn(io, read_after_a_pause(reader, received), asio::detached);

        io.run_for(20s);
        EXPECT_TRUE(written) << "non_blocking " << non_blocking;
        EXPECT_FALSE(write_ec) << write_ec.message();
        ASSERT_TRUE(received) << "non_blocking " << non_blocking;
        EXPECT_TRUE(received->body() == expected) << "non_blocking " << non_blocking;
    }
}

// A 1 MiB answer, and a reader that takes at most `piece` bytes every `pause`, counted in
// `total`.
http::response<http::string_body> megabyte_answer() {
    http::response<http::string_body> response{http::status::ok, 11};
    response.body() = std::string(std::size_t{1} << 20, 'x');
    response.prepare_payload();
    return response;
}
awaitable<void> read_slowly(local_stream& reader, std::size_t piece,
                            std::chrono::milliseconds pause, std::size_t& total) {
    std::vector<char> buffer(piece);
    steady_timer timer(reader.get_executor());
    for (;;) {
        timer.expires_after(pause);
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        const auto n = co_await reader.async_read_some(asio::buffer(buffer), on_error(ec));
        total += n;
        if (ec) co_return;
    }
}

// A reader that takes nothing: the write gives up when its limit has passed, with
// beast::error::timeout, and the connection is closed (the reader sees it end).
TEST(SendMessage, AWriteTheReaderTakesNothingOfFailsWithATimeoutAtItsLimit) {
    asio::io_context io(1);
    local_socket a(io), b(io);
    asio::local::connect_pair(a, b);
    a.non_blocking(true);
    local_stream writer(std::move(a));
    const auto response = megabyte_answer();
    boost::system::error_code ec;
    std::optional<std::chrono::steady_clock::duration> took;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            const auto began = std::chrono::steady_clock::now();
            co_await send_message(writer, response, 1s, ec);
            took = std::chrono::steady_clock::now() - began;
        },
        asio::detached);
    io.run_for(10s);
    ASSERT_TRUE(took) << "the write still waits";
    EXPECT_EQ(ec, beast::error::timeout) << ec.message();
    EXPECT_GE(*took, 1s);
    EXPECT_FALSE(writer.socket().is_open());
}

// As nginx's send_timeout: the limit is on each wait, not on the whole answer. A reader that
// takes 32 KiB every 0.1 s needs over 3 s for the answer, and gets all of it with a limit of
// 2 s: with the writer's buffer set to 64 KiB (128 KiB to the kernel), each wait lasts until
// about 96 KiB are read, 0.3 s. The stream is then left without a deadline (the next request's
// read is timed as the listener decides, not by a deadline left from this write).
TEST(SendMessage, AReaderThatKeepsTakingBytesIsNotCutOffAndNoDeadlineIsLeftBehind) {
    constexpr auto kLimit = 2s;
    asio::io_context io(1);
    local_socket a(io), b(io);
    asio::local::connect_pair(a, b);
    a.non_blocking(true);
    a.set_option(asio::socket_base::send_buffer_size(64 * 1024));
    local_stream writer(std::move(a)), reader(std::move(b));
    const auto response = megabyte_answer();
    boost::system::error_code write_ec;
    bool written = false;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            co_await send_message(writer, response, kLimit, write_ec);
            written = true;
        },
        asio::detached);
    std::size_t total = 0;
    asio::co_spawn(io, read_slowly(reader, 32 * 1024, 100ms, total), asio::detached);
    const auto began = std::chrono::steady_clock::now();
    while (!written && std::chrono::steady_clock::now() - began < 30s)
        io.run_one_for(1s);
    ASSERT_TRUE(written);
    EXPECT_FALSE(write_ec) << write_ec.message();
    EXPECT_GT(std::chrono::steady_clock::now() - began, kLimit) << "the reader was not slow enough";
    // The writer's next read waits longer than the write's limit, and is not cut off.
    std::array<char, 16> next{};
    boost::system::error_code read_ec;
    std::size_t next_size = 0;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            next_size = co_await writer.async_read_some(asio::buffer(next), on_error(read_ec));
        },
        asio::detached);
    steady_timer later(io, kLimit + 500ms);
    later.async_wait([&](boost::system::error_code) {
        asio::write(reader.socket(), asio::buffer(std::string_view("next")));
    });
    io.run_for(kLimit + 1s);
    EXPECT_FALSE(read_ec) << read_ec.message();
    EXPECT_EQ(std::string_view(next.data(), next_size), "next");
    EXPECT_GT(total, response.body().size()) << "the whole answer, header and body, arrived";
}

}  // namespace
}  // namespace ensemble
