// HTTP reads and writes that finish at once when they can. A small request or answer usually
// arrives whole in one read and fits the socket's send buffer whole; Beast's asynchronous
// operations would still complete each through another turn of the event loop (one more
// epoll_wait and handler dispatch per operation, measured as the worker's main per-request cost
// beside nginx). These do the work in place and fall back to the asynchronous operation only
// when they must wait.
#pragma once

#include "os/asio.h"

namespace ensemble {

// Parses what `buffer` already holds into `parser`. Returns the bytes used; `ec` is left clear
// when the parser needs more bytes, and holds any other parse error (need_buffer included: a
// buffer_body's chunk is full).
template <bool isRequest>
std::size_t parse_buffered(http::basic_parser<isRequest>& parser, beast::flat_buffer& buffer,
                           boost::system::error_code& ec) {
    std::size_t parsed = 0;
    while (buffer.size() > 0 && !parser.is_done()) {
        const auto used = parser.put(buffer.data(), ec);
        buffer.consume(used);
        parsed += used;
        if (ec == http::error::need_more) {
            ec = {};
            break;
        }
        if (ec || used == 0) break;
    }
    return parsed;
}

// Reads the rest of a message whose header `parser` has, until it is done: each read takes what
// the socket holds, up to what a declared length still needs (at most `most_per_read`; 64 KiB
// per read for a chunked body). Beast's own read takes at most 64 KiB at a time: a 1 MB body
// was 16 reads and 16 turns of the event loop.
template <typename Stream, bool isRequest>
awaitable<void> read_body(Stream& stream, beast::flat_buffer& buffer,
                          http::basic_parser<isRequest>& parser, std::size_t most_per_read,
                          boost::system::error_code& ec) {
    constexpr std::size_t kChunkedRead = 64 * 1024;
    while (!ec && !parser.is_done()) {
        std::size_t want = kChunkedRead;
        if (const auto left = parser.content_length_remaining())
            want = static_cast<std::size_t>(std::min<std::uint64_t>(*left, most_per_read));
        const auto n = co_await stream.async_read_some(buffer.prepare(want), on_error(ec));
        buffer.commit(n);
        if (ec == asio::error::eof) {
            ec = {};
            parser.put_eof(ec);  // the message was cut short: partial_message
            co_return;
        }
        if (!ec) parse_buffered(parser, buffer, ec);
    }
}

// Writes what the socket takes now, then the rest asynchronously. Only on a socket in
// non-blocking mode: on any other, a synchronous write could stall the event loop behind a slow
// reader, so it is all asynchronous.
template <typename Stream, typename Serializer>
awaitable<void> write_now(Stream& stream, Serializer& serializer, boost::system::error_code& ec) {
    if (stream.socket().non_blocking()) {
        http::write(stream, serializer, ec);
        if (ec != asio::error::would_block && ec != asio::error::try_again) co_return;
        ec = {};
    }
    co_await http::async_write(stream, serializer, on_error(ec));
}

}  // namespace ensemble
