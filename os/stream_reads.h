// Reads that stay sound when a read that drained its socket leaves the next one waiting for
// epoll (kDrainedReadsWaitForEpoll, os/asio.h). Each new batch of bytes, and each close that
// comes after the last read, raises a new edge, so a read that waits for one misses nothing, with
// one exception: a close (or reset) that came together with the bytes a short read took was
// taken in by that read and is not reported again. So:
// - every read that goes on with a message the peer is in the middle of sending asks the peer
//   first (peer_end): read_more, read_http. It costs one system call, the one Asio's own
//   speculative read would have made (and failed) before it waited;
// - the first read after writing to the peer (a request's answer, a client's next request) waits
//   for epoll as it is, and that saves the call. Anything the peer sends after our write raises
//   an edge. A close the peer sent before our write, with the last bytes we read, stays hidden
//   from that read: an engine that closed a kept-alive connection right after its answer makes
//   our next write on it fail (a Unix socket) or draw a reset (TCP), which is reported; a client
//   that closed its side with its request is found by the idle sweep's peek
//   (HttpListener::close_idle_sessions) instead of at its idle timeout.
#pragma once

#include <sys/socket.h>

#include <boost/beast/core/read_size.hpp>
#include <cerrno>

#include "os/asio.h"

namespace ensemble {

// recv's answer to a look at the next byte of an open socket, without taking it or waiting.
inline ssize_t peek_byte(int socket) {
    char byte = 0;
    return ::recv(socket, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
}

// Whether the peer of an open socket has ended its side, asked at once without reading (a
// pipelined request waits where it is): asio::error::eof when it closed it, the error when it
// reset it (on Linux, the peek that sees a reset also clears it: a read after it would find only
// the end of stream), clear while it is open or bytes wait.
inline boost::system::error_code peer_end(int socket) {
    const auto n = peek_byte(socket);
    if (n == 0) return asio::error::eof;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return {errno, boost::system::system_category()};
    return {};
}

inline bool peer_closed(int socket) {
    return static_cast<bool>(peer_end(socket));
}

// The descriptor under an Asio socket or a Beast stream.
template <typename Stream>
int native_socket(Stream& stream) {
    if constexpr (requires { stream.socket(); }) {
        return stream.socket().native_handle();
    } else {
        return stream.native_handle();
    }
}

template <typename Stream>
bool peer_closed(Stream& stream) {
    return peer_closed(native_socket(stream));
}

// Whether bytes the peer sent wait unread on an open socket (a request on its way in), asked at
// once without reading, as peer_closed is.
template <typename Stream>
bool bytes_waiting(Stream& stream) {
    return peek_byte(native_socket(stream)) > 0;
}

// Reads some bytes of a message the peer is in the middle of sending. A peer that has closed or
// reset its side is not read: its end comes back in `ec` (asio::error::eof, or the reset) as from
// the read. (`into` is taken by value: a coroutine keeps no reference to a caller's temporary.)
template <typename Stream, typename MutableBuffers>
awaitable<std::size_t> read_more(Stream& stream, MutableBuffers into,
                                 boost::system::error_code& ec) {
    if constexpr (kDrainedReadsWaitForEpoll) {
        ec = peer_end(native_socket(stream));
        if (ec) co_return 0;
    }
    co_return co_await stream.async_read_some(into, on_error(ec));
}

// Parses what `buffer` already holds into `parser` (up to the end of the header only, when
// `header_only`). Returns the bytes used; `ec` is left clear when the parser needs more bytes,
// and holds any other parse error (need_buffer included: a buffer_body's chunk is full).
template <bool isRequest>
std::size_t parse_buffered(http::basic_parser<isRequest>& parser, beast::flat_buffer& buffer,
                           boost::system::error_code& ec, bool header_only = false) {
    std::size_t parsed = 0;
    while (buffer.size() > 0 && !(header_only ? parser.is_header_done() : parser.is_done())) {
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

// Whether the peer may have sent anything since this side last wrote to it (or since the
// connection opened): then an earlier read may have taken in a close with those bytes, and every
// read of the message asks for one first (read_more). Otherwise the first read just waits.
enum class PeerSent { nothing_since_we_wrote, maybe };

// Reads an HTTP message (or only its header, when `header_only`) into `parser` as
// http::async_read (async_read_header) would, with the same errors (end_of_stream when the peer
// closed before a byte of it, partial_message when it closed within it), from what `buffer`
// holds, then from the socket.
template <typename Stream, bool isRequest>
awaitable<void> read_http(Stream& stream, beast::flat_buffer& buffer,
                          http::basic_parser<isRequest>& parser, boost::system::error_code& ec,
                          PeerSent sent, bool header_only = false) {
    constexpr std::size_t kReadSize = 65536;  // Beast's own
    const auto whole = [&] { return header_only ? parser.is_header_done() : parser.is_done(); };
    ec = {};
    parser.eager(!header_only);  // as Beast's reads set it
    parse_buffered(parser, buffer, ec, header_only);
    bool begun = sent == PeerSent::maybe || parser.got_some();
    while (!ec && !whole()) {
        const auto room = beast::read_size(buffer, kReadSize);
        if (room == 0) {  // the buffer is at its own limit (Beast throws here)
            ec = http::error::buffer_overflow;
            break;
        }
        const auto into = buffer.prepare(room);
        std::size_t n = 0;
        if (begun) {
            n = co_await read_more(stream, into, ec);
        } else {
            n = co_await stream.async_read_some(into, on_error(ec));
        }
        begun = true;
        buffer.commit(n);
        if (ec == asio::error::eof) {
            ec = {};
            if (!parser.got_some()) {
                ec = http::error::end_of_stream;
                break;
            }
            parser.put_eof(ec);  // ends a body that ends at close; anything else is cut short
            break;
        }
        if (!ec) parse_buffered(parser, buffer, ec, header_only);
    }
}

}  // namespace ensemble
