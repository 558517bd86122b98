// The bytes of the HTTP/1.1 messages the worker sends, written in one pass. Beast's serializer
// reaches the same bytes through layers of buffer-sequence views and variants: callgrind counted
// about 4,700 instructions per message, a quarter of the worker's own work per proxied request.
// Here a header is one string and a body part goes out as it is, framed as a chunk when the
// message is chunked; tests/unit/http_wire_test.cpp holds them to Beast's bytes.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "os/beast_http.h"

namespace ensemble {

// Appends `header`'s wire form: its start line, its fields in order, and the empty line.
void append_wire_header(std::string& out, const http::request_header<>& header);
void append_wire_header(std::string& out, const http::response_header<>& header);

// Fields that always belong to one connection, not to the message (RFC 9110 7.6.1): a proxy
// drops them, and those a message's Connection header names (relayed_header and
// forwarded_header drop both).
bool is_hop_by_hop(http::field field);

// How the body of an answer relayed to a client is delimited.
enum class BodyFraming {
    as_engine,    // as the engine's: its Content-Length, or no body
    chunked,      // in chunks: its length is not known ahead (or the filter changes it)
    until_close,  // by the end of the connection: the same, for an HTTP/1.0 client
};

// The header of an answer relayed from the engine, written straight from the engine's (not
// edited first, which cost about 1,000 instructions per request in field lookups and
// allocations): HTTP/1.1, the engine's status and fields in order without its hop-by-hop ones
// (those its Connection names too) and its Server, then `Server: ensemble-worker`; framed as
// `framing` says (unless as_engine, the engine's Content-Length dropped; chunked keeps its other
// transfer codings, until_close cannot), and `Connection: close` when the client's connection ends
// with it, as it must for until_close.
std::string relayed_header(const http::response_header<>& engine, BodyFraming framing,
                           bool keep_alive);

// The header of a request forwarded to the engine, written straight from the client's, which
// stays as it came (for a retry): its method and target as HTTP/1.1, its fields in order
// without the hop-by-hop ones (those its Connection names too), Host, Content-Length, Expect
// (the body is already here: no 100 Continue to relay), Proxy-Authorization and, unless
// `keep_authorization`, Authorization; then the engine's Host and the body's length (for a
// body, or a POST, PUT or OPTIONS, as Beast's prepare_payload sets it).
std::string forwarded_header(const http::request_header<>& client, std::string_view host,
                             std::size_t body_size, bool keep_authorization);

// A chunk's size line ("1a2b\r\n"): lower-case hexadecimal, as Beast writes it.
class ChunkSizeLine {
  public:
    explicit ChunkSizeLine(std::size_t size);
    std::string_view text() const { return {digits_.data() + start_, digits_.size() - start_}; }

  private:
    std::array<char, 2 * sizeof(std::size_t) + 2> digits_{};
    std::size_t start_ = 0;
};

inline constexpr std::string_view kChunkEnd = "\r\n";
inline constexpr std::string_view kLastChunk = "0\r\n\r\n";

}  // namespace ensemble
