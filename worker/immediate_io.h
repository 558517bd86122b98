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
