// HTTP reads and writes that finish at once when they can. A small request or answer usually
// arrives whole in one read and fits the socket's send buffer whole; Beast's asynchronous
// operations would still complete each through another turn of the event loop (one more
// epoll_wait and handler dispatch per operation, measured as the worker's main per-request cost
// beside nginx). These do the work in place and fall back to the asynchronous operation only
// when they must wait.
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "os/asio.h"
#include "os/stream_reads.h"
#include "worker/http_wire.h"

namespace ensemble {

// How long a write to a client may wait for its socket to take more, unless the port is told
// otherwise (--send-timeout): nginx's send_timeout.
inline constexpr std::chrono::seconds kDefaultSendTimeout{60};

// An HTTP/1.1 message on its way out: its header, then its body in parts, each framed as a chunk
// when the header says chunked. A part is written with what is still to go before it, as far as
// the socket takes it at once (send_now); what it cannot take yet goes asynchronously
// (send_rest). The two are apart so that the usual case, all written at once, makes no
// coroutine frame: each is a malloc and a free. Only on a socket in non-blocking mode is anything
// written at once: on any other, a synchronous write could stall the event loop behind a slow
// reader.
class OutgoingMessage {
  public:
    template <bool isRequest, typename Body>
    explicit OutgoingMessage(const http::message<isRequest, Body>& message)
        : chunked_(message.chunked()) {
        header_.reserve(512);
        append_wire_header(header_, message.base());
    }
    // A header already in its wire form (relayed_header, forwarded_header).
    OutgoingMessage(std::string header, bool chunked)
        : header_(std::move(header)), chunked_(chunked) {}
    // What send_now leaves points into the message's own header and size line.
    OutgoingMessage(const OutgoingMessage&) = delete;
    OutgoingMessage& operator=(const OutgoingMessage&) = delete;

    // Writes the header if it has not gone yet, then `part` of the body (`last` ends the message),
    // as far as the socket takes them now. Returns false when some are left for send_rest, which
    // must then come next; until it is done, `part`'s bytes must stay where they are.
    template <typename Stream>
    bool send_now(Stream& stream, std::string_view part, bool last, boost::system::error_code& ec) {
        assert(rest_.empty() && "send_rest must finish what send_now left first");
        std::array<asio::const_buffer, 5> buffers;
        std::size_t count = 0;
        if (!header_sent_) buffers[count++] = asio::buffer(header_);
        const bool framed = chunked_ && !part.empty();
        if (framed) {
            size_line_ = ChunkSizeLine(part.size());
            buffers[count++] = asio::buffer(size_line_.text().data(), size_line_.text().size());
        }
        if (!part.empty()) buffers[count++] = asio::buffer(part.data(), part.size());
        if (framed) buffers[count++] = asio::buffer(kChunkEnd.data(), kChunkEnd.size());
        if (chunked_ && last) buffers[count++] = asio::buffer(kLastChunk.data(), kLastChunk.size());
        header_sent_ = true;
        done_ = last;
        ec = {};
        const std::span<const asio::const_buffer> all(buffers.data(), count);
        std::size_t written = 0;
        if (count > 0 && stream.socket().non_blocking()) {
            written = stream.socket().write_some(all, ec);
            if (ec == asio::error::would_block || ec == asio::error::try_again) ec = {};
            if (ec) return true;  // nothing is left to try: the failure is in `ec`
        }
        for (const auto& buffer : all) {
            const auto skipped = std::min(written, buffer.size());
            written -= skipped;
            if (skipped < buffer.size()) rest_.push_back(buffer + skipped);
        }
        return rest_.empty();
    }

    // From now on, a write that has to wait waits at most `limit` for the socket to take more
    // (which it does once the peer has read enough for the buffers to drain, about a third);
    // then the stream's timeout closes it and the write fails with beast::error::timeout. Timed
    // per write, as nginx's send_timeout is: a slow reader that keeps reading is not cut off.
    // (Only send_rest waits, so an answer that the socket takes at once arms no timer.)
    void limit_waits(std::chrono::seconds limit) { wait_limit_ = limit; }

    // Writes what send_now left, waiting for the socket to take it.
    template <typename Stream>
    awaitable<void> send_rest(Stream& stream, boost::system::error_code& ec) {
        if (!wait_limit_) {
            co_await asio::async_write(stream, rest_, on_error(ec));
            rest_.clear();
            co_return;
        }
        std::size_t first = 0;  // the first of rest_ not yet written whole
        while (first < rest_.size() && !ec) {
            stream.expires_after(*wait_limit_);
            const std::span<const asio::const_buffer> left(rest_.data() + first,
                                                           rest_.size() - first);
            auto written = co_await stream.async_write_some(left, on_error(ec));
            while (written > 0) {
                auto& buffer = rest_[first];
                const auto taken = std::min(written, buffer.size());
                buffer += taken;
                written -= taken;
                if (buffer.size() == 0) ++first;
            }
        }
        // A timer left armed would time the stream's next read (the next request's) too.
        stream.expires_never();
        rest_.clear();
    }

    // Both in one: for answers off the hot path.
    template <typename Stream>
    awaitable<void> send(Stream& stream, std::string_view part, bool last,
                         boost::system::error_code& ec) {
        if (!send_now(stream, part, last, ec)) co_await send_rest(stream, ec);
    }

    // Whether the header has gone (or is going) out: then a failure can no longer be answered.
    // (After a failed write neither says more than that it was tried.)
    bool header_sent() const { return header_sent_; }
    bool done() const { return done_; }

  private:
    std::string header_;
    bool chunked_;
    bool header_sent_ = false;
    bool done_ = false;
    ChunkSizeLine size_line_{0};
    std::vector<asio::const_buffer> rest_;  // what the socket could not take at once
    std::optional<std::chrono::seconds> wait_limit_;
};

// A whole message whose body is a string, to a client: its header and body in one write, which
// may wait `send_timeout` at most for the client to take anything (OutgoingMessage::limit_waits).
template <typename Stream, bool isRequest>
awaitable<void> send_message(Stream& stream,
                             const http::message<isRequest, http::string_body>& message,
                             std::chrono::seconds send_timeout, boost::system::error_code& ec) {
    OutgoingMessage outgoing(message);
    outgoing.limit_waits(send_timeout);
    const std::string_view body = message.body();
    co_await outgoing.send(stream, body, true, ec);
}

}  // namespace ensemble
