// HTTP reads and writes that finish at once when they can. A small request or answer usually
// arrives whole in one read and fits the socket's send buffer whole; Beast's asynchronous
// operations would still complete each through another turn of the event loop (one more
// epoll_wait and handler dispatch per operation, measured as the worker's main per-request cost
// beside nginx). These do the work in place and fall back to the asynchronous operation only
// when they must wait.
#pragma once

#include <algorithm>
#include <array>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "os/asio.h"
#include "worker/http_wire.h"

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
template <typename Stream>
awaitable<void> write_now(Stream& stream, std::span<const asio::const_buffer> buffers,
                          boost::system::error_code& ec) {
    std::size_t written = 0;
    if (stream.socket().non_blocking()) {
        written = stream.socket().write_some(buffers, ec);
        if (ec && ec != asio::error::would_block && ec != asio::error::try_again) co_return;
        ec = {};
    }
    std::vector<asio::const_buffer> rest;  // rare: what the socket's send buffer could not take
    for (const auto& buffer : buffers) {
        const auto skipped = std::min(written, buffer.size());
        written -= skipped;
        if (skipped < buffer.size()) rest.push_back(buffer + skipped);
    }
    if (!rest.empty()) co_await asio::async_write(stream, rest, on_error(ec));
}

// An HTTP/1.1 message on its way out: its header, then its body in parts, each part written
// with what is still to go before it (see write_now), framed as a chunk when the header says
// chunked.
class OutgoingMessage {
  public:
    template <bool isRequest, typename Body>
    explicit OutgoingMessage(const http::message<isRequest, Body>& message)
        : chunked_(message.chunked()) {
        header_.reserve(512);
        append_wire_header(header_, message.base());
    }

    // Sends the header if it has not gone yet, then `part` of the body; `last` ends the message.
    // An empty part that is not the last sends only what is still to go.
    template <typename Stream>
    awaitable<void> send(Stream& stream, std::string_view part, bool last,
                         boost::system::error_code& ec) {
        std::array<asio::const_buffer, 5> buffers;
        std::size_t count = 0;
        if (!header_sent_) buffers[count++] = asio::buffer(header_);
        const ChunkSizeLine size_line(part.size());
        const bool framed = chunked_ && !part.empty();
        if (framed)
            buffers[count++] = asio::buffer(size_line.text().data(), size_line.text().size());
        if (!part.empty()) buffers[count++] = asio::buffer(part.data(), part.size());
        if (framed) buffers[count++] = asio::buffer(kChunkEnd.data(), kChunkEnd.size());
        if (chunked_ && last) buffers[count++] = asio::buffer(kLastChunk.data(), kLastChunk.size());
        header_sent_ = true;
        done_ = last;
        const std::span<const asio::const_buffer> all(buffers.data(), count);
        if (count > 0) co_await write_now(stream, all, ec);
    }

    // Whether the header has gone (or is going) out: then a failure can no longer be answered.
    bool header_sent() const { return header_sent_; }
    bool done() const { return done_; }

  private:
    std::string header_;
    bool chunked_;
    bool header_sent_ = false;
    bool done_ = false;
};

// A whole message whose body is a string: its header and body in one write.
template <typename Stream, bool isRequest>
awaitable<void> send_message(Stream& stream,
                             const http::message<isRequest, http::string_body>& message,
                             boost::system::error_code& ec) {
    OutgoingMessage outgoing(message);
    const std::string_view body = message.body();
    co_await outgoing.send(stream, body, true, ec);
}

}  // namespace ensemble
