// The worker's own wire form of an HTTP header (worker/http_wire.h) against Beast's serializer,
// byte for byte, on headers of every shape: methods known and not, versions 1.0 and 1.1, known
// and unknown fields, statuses with and without a reason of their own.
#include "worker/http_wire.h"

#include <gtest/gtest.h>

#include <random>
#include <sstream>

namespace ensemble {
namespace {

template <bool isRequest>
std::string beast_wire(const http::header<isRequest>& header) {
    std::ostringstream out;
    out << header;
    return out.str();
}

template <bool isRequest>
std::string our_wire(const http::header<isRequest>& header) {
    std::string out;
    append_wire_header(out, header);
    return out;
}

void add_some_fields(http::fields& fields, std::mt19937& random) {
    static const std::vector<std::pair<std::string, std::string>> kFields{
        {"Content-Type", "application/json; charset=utf-8"},
        {"content-length", "117"},
        {"Host", "127.0.0.1:8100"},
        {"Authorization", "Bearer sk-0123"},
        {"X-Request-Id", ""},
        {"x-unknown-to-beast", "a\tb  c"},
        {"Transfer-Encoding", "chunked"},
        {"Connection", "keep-alive"},
        {"Set-Cookie", "a=1"},
        {"Set-Cookie", "b=2"}};
    const auto count = random() % (kFields.size() + 1);
    for (std::size_t i = 0; i < count; ++i) {
        const auto& [name, value] = kFields[random() % kFields.size()];
        fields.insert(name, value);
    }
}

TEST(HttpWire, RequestHeadersAreWhatBeastWrites) {
    std::mt19937 random(7);
    // FOO and BREW are not among Beast's verbs: written from the method string it keeps.
    const std::vector<std::string> methods{"GET", "POST", "HEAD", "DELETE", "FOO", "BREW"};
    const std::vector<std::string> targets{"/", "/v1/chat/completions", "/x?y=1&z=%20", "*"};
    for (int round = 0; round < 500; ++round) {
        http::request_header<> header;
        header.method_string(methods[random() % methods.size()]);
        header.target(targets[random() % targets.size()]);
        header.version(random() % 2 == 0 ? 11 : 10);
        add_some_fields(header, random);
        ASSERT_EQ(our_wire(header), beast_wire(header)) << round;
    }
}

TEST(HttpWire, ResponseHeadersAreWhatBeastWrites) {
    std::mt19937 random(11);
    const std::vector<unsigned> statuses{100, 200, 204, 299, 304, 404, 429, 503, 599, 999};
    for (int round = 0; round < 500; ++round) {
        http::response_header<> header;
        header.result(statuses[random() % statuses.size()]);
        if (random() % 3 == 0) header.reason(random() % 2 == 0 ? "Fine Thanks" : "");
        header.version(random() % 2 == 0 ? 11 : 10);
        add_some_fields(header, random);
        ASSERT_EQ(our_wire(header), beast_wire(header)) << round;
    }
}

// What llama-server sends, relayed: its fields in order, less the connection's own and its
// Server; ours after them. A length only when the body is not re-framed as chunks.
TEST(HttpWire, ARelayedHeaderKeepsTheEnginesFieldsButNotItsConnectionsOrItsServer) {
    http::response_header<> engine;
    engine.version(10);
    engine.result(http::status::ok);
    engine.set("Server", "llama.cpp");
    engine.set("Access-Control-Allow-Origin", "");
    engine.set("Content-Type", "application/json; charset=utf-8");
    engine.set("Content-Length", "42");
    engine.set("Keep-Alive", "timeout=5, max=100");
    engine.set("Connection", "keep-alive");
    engine.set("X-Request-Id", "abc");
    const std::string kept =
        "Access-Control-Allow-Origin: \r\n"
        "Content-Type: application/json; charset=utf-8\r\n";
    const auto relayed = [&](bool chunked, bool keep_alive) {
        std::string out;
        append_relayed_header(out, engine, chunked, keep_alive);
        return out;
    };
    EXPECT_EQ(relayed(false, true), "HTTP/1.1 200 OK\r\n" + kept +
                                        "Content-Length: 42\r\nX-Request-Id: abc\r\n"
                                        "Server: ensemble-worker\r\n\r\n");
    EXPECT_EQ(relayed(true, false), "HTTP/1.1 200 OK\r\n" + kept +
                                        "X-Request-Id: abc\r\nServer: ensemble-worker\r\n"
                                        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");

    // An engine's own chunked framing is not passed on as a field of the message: the worker
    // frames what it sends itself.
    http::response_header<> streamed;
    streamed.result(http::status::ok);
    streamed.set("Content-Type", "text/event-stream");
    streamed.set("Transfer-Encoding", "chunked");
    streamed.set("Trailer", "X-Checksum");
    std::string out;
    append_relayed_header(out, streamed, true, true);
    EXPECT_EQ(out,
              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              "Server: ensemble-worker\r\nTransfer-Encoding: chunked\r\n\r\n");
}

TEST(HttpWire, AChunksSizeLineIsLowerCaseHexadecimal) {
    EXPECT_EQ(ChunkSizeLine(0).text(), "0\r\n");
    EXPECT_EQ(ChunkSizeLine(10).text(), "a\r\n");
    EXPECT_EQ(ChunkSizeLine(0x1a2b).text(), "1a2b\r\n");
    EXPECT_EQ(ChunkSizeLine(std::size_t(-1)).text(),
              std::string(2 * sizeof(std::size_t), 'f') + "\r\n");
}

}  // namespace
}  // namespace ensemble
