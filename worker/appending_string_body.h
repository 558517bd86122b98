// How the worker reads a request body (issue 14, a 1 MB body): into a std::string like Beast's
// string_body, but appended to (Beast's own reader zero-fills each part before it copies it in:
// 7 % of the worker's CPU), and a body of declared length straight into place (through the read
// buffer, its copy was 17 %). Only for reading; the message is handed on as an
// http::request<http::string_body> (to_string_body).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "os/asio.h"
#include "protocol/json_scan.h"
#include "worker/immediate_io.h"

namespace ensemble {

struct AppendingStringBody {
    using value_type = std::string;

    static std::uint64_t size(const value_type& body) { return body.size(); }

    class reader {
      public:
        template <bool isRequest, class Fields>
        reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

        void init(const boost::optional<std::uint64_t>& length, boost::system::error_code& ec) {
            // (The parser's body limit has been checked against a declared length already.)
            if (length) body_.reserve(static_cast<std::size_t>(*length));
            ec = {};
        }

        template <class ConstBufferSequence>
        std::size_t put(const ConstBufferSequence& buffers, boost::system::error_code& ec) {
            std::size_t appended = 0;
            for (const auto part : beast::buffers_range_ref(buffers)) {
                body_.append(static_cast<const char*>(part.data()), part.size());
                appended += part.size();
            }
            ec = {};
            return appended;
        }

        void finish(boost::system::error_code& ec) { ec = {}; }

      private:
        value_type& body_;
    };
};

// Reads the rest of a request whose header `parser` has. A body of declared length goes straight
// into its string, in reads as large as the socket holds, and each part is looked over for
// `plain` while it is in cache (the JSON scan later steps over its plain blocks); the parser,
// bypassed, does not know it is whole: take the message with release(). A chunked body goes
// through the parser (and is not looked over). A body cut short is http::error::partial_message.
// The string is sized (zero-filled: resident memory) as bytes arrive, at most doubling what came
// and at least kFirstRead ahead, never to the declared length at once: a client that declares
// 32 MiB and sends nothing holds 64 KiB, not 32 MiB.
template <typename Stream>
awaitable<void> read_request_body(Stream& stream, beast::flat_buffer& buffer,
                                  http::request_parser<AppendingStringBody>& parser,
                                  PlainBlocks& plain, boost::system::error_code& ec) {
    constexpr std::size_t kFirstRead = 64 * 1024;
    parse_buffered(parser, buffer, ec);  // what the buffer holds (after the header)
    if (ec || parser.is_done()) co_return;
    const auto left = parser.content_length_remaining();
    if (!left) {
        co_await read_http(stream, buffer, parser, ec, PeerSent::maybe);
        co_return;
    }
    auto& body = parser.get().body();
    const std::size_t have = body.size();
    const std::size_t whole = have + static_cast<std::size_t>(*left);
    std::size_t filled = have;
    while (filled < whole && !ec) {
        plain.extend(std::string_view(body.data(), filled));
        if (filled == body.size())
            body.resize(std::min(whole, filled + std::max(kFirstRead, filled - have)));
        const auto into = asio::buffer(body.data() + filled, body.size() - filled);
        const auto n = co_await read_more(stream, into, ec);
        filled += n;
    }
    plain.extend(std::string_view(body.data(), filled));
    body.resize(filled);
    if (ec == asio::error::eof) ec = http::error::partial_message;
}

// The same message with Beast's string_body, the type the rest of the worker handles (both
// bodies are a std::string: nothing is copied).
inline http::request<http::string_body> to_string_body(http::request<AppendingStringBody>&& read) {
    return http::request<http::string_body>(std::move(read.base()), std::move(read.body()));
}

}  // namespace ensemble
