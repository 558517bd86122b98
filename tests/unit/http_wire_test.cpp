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

void set_fields(http::fields& fields,
                std::initializer_list<std::pair<const char*, const char*>> named) {
    for (const auto& [name, value] : named)
        fields.set(name, value);
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
    set_fields(engine, {{"Server", "llama.cpp"},
                        {"Access-Control-Allow-Origin", ""},
                        {"Content-Type", "application/json; charset=utf-8"},
                        {"Content-Length", "42"},
                        {"Keep-Alive", "timeout=5, max=100"},
                        {"Connection", "keep-alive"},
                        {"X-Request-Id", "abc"}});
    const std::string kept =
        "Access-Control-Allow-Origin: \r\n"
        "Content-Type: application/json; charset=utf-8\r\n";
    const auto relayed = [&](BodyFraming framing, bool keep_alive) {
        return relayed_header(engine, framing, keep_alive);
    };
    EXPECT_EQ(relayed(BodyFraming::as_engine, true),
              "HTTP/1.1 200 OK\r\n" + kept +
                  "Content-Length: 42\r\nX-Request-Id: abc\r\n"
                  "Server: ensemble-worker\r\n\r\n");
    EXPECT_EQ(relayed(BodyFraming::chunked, false),
              "HTTP/1.1 200 OK\r\n" + kept +
                  "X-Request-Id: abc\r\nServer: ensemble-worker\r\n"
                  "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    // For an HTTP/1.0 client: no length and no framing; the end of the connection ends it.
    EXPECT_EQ(relayed(BodyFraming::until_close, false),
              "HTTP/1.1 200 OK\r\n" + kept +
                  "X-Request-Id: abc\r\nServer: ensemble-worker\r\nConnection: close\r\n\r\n");

    // An engine's own chunked framing is not passed on as a field of the message: the worker
    // frames what it sends itself.
    http::response_header<> streamed;
    streamed.result(http::status::ok);
    set_fields(streamed, {{"Content-Type", "text/event-stream"},
                          {"Transfer-Encoding", "chunked"},
                          {"Trailer", "X-Checksum"}});
    EXPECT_EQ(relayed_header(streamed, BodyFraming::chunked, true),
              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              "Server: ensemble-worker\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Other codings stay on the relayed bytes, so the client is told of them.
    streamed.set("Transfer-Encoding", "gzip, Chunked ");
    EXPECT_NE(relayed_header(streamed, BodyFraming::chunked, true)
                  .find("\r\nTransfer-Encoding: gzip, Chunked\r\n"),
              std::string::npos);
    streamed.set("Transfer-Encoding", "gzip");  // then the body ends at the close: chunked here
    EXPECT_NE(relayed_header(streamed, BodyFraming::chunked, true)
                  .find("\r\nTransfer-Encoding: gzip, chunked\r\n"),
              std::string::npos);
}

// What the engine is sent for a client's request: the client's own fields in order, not the
// ones about its connection to us or its credentials; the engine's Host and the body's length.
TEST(HttpWire, AForwardedHeaderKeepsTheClientsFieldsButNotItsConnectionsOrCredentials) {
    http::request_header<> client;
    client.version(10);
    client.method(http::verb::post);
    client.target("/v1/chat/completions");
    set_fields(client, {{"Host", "models.example:8100"},
                        {"Authorization", "Bearer secret-key"},
                        {"Proxy-Authorization", "Basic cHJveHk6a2V5"},
                        {"Content-Type", "application/json"},
                        {"Connection", "keep-alive"},
                        {"Content-Length", "17"},
                        {"Expect", "100-continue"},
                        {"X-Trace", "t1"}});
    EXPECT_EQ(forwarded_header(client, "localhost", 17, false),
              "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
              "X-Trace: t1\r\nHost: localhost\r\nContent-Length: 17\r\n\r\n");
    // The front door passes the key on (its model port checks the same one); a proxy's
    // credentials never go on.
    const auto with_key = forwarded_header(client, "localhost", 17, true);
    EXPECT_NE(with_key.find("\r\nAuthorization: Bearer secret-key\r\n"), std::string::npos);
    EXPECT_EQ(with_key.find("Proxy-Authorization"), std::string::npos);

    // A GET without a body has no length; a POST always has one.
    http::request_header<> get;
    get.method(http::verb::get);
    get.target("/v1/models");
    EXPECT_EQ(forwarded_header(get, "localhost", 0, false),
              "GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n");
    get.method(http::verb::post);
    EXPECT_EQ(forwarded_header(get, "localhost", 0, false),
              "POST /v1/models HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
}

// RFC 9110 7.6.1: a field the Connection header names belongs to the connection, in either
// direction, whatever the case of its name and however the list is spelt.
TEST(HttpWire, FieldsNamedByConnectionAreNotPassedOn) {
    http::request_header<> client;
    client.method(http::verb::post);
    client.target("/v1/completions");
    set_fields(client, {{"X-Hop", "1"}, {"X-Kept", "2"}});
    client.insert("Connection", "keep-alive, x-HOP");
    client.insert("Connection", " ,x-other ,x;y, X-After");  // a malformed name, then more
    client.insert("X-Other", "3");
    client.insert("X-After", "4");
    EXPECT_EQ(forwarded_header(client, "localhost", 0, false),
              "POST /v1/completions HTTP/1.1\r\nX-Kept: 2\r\nHost: localhost\r\n"
              "Content-Length: 0\r\n\r\n");

    http::response_header<> engine;
    engine.result(http::status::ok);
    set_fields(engine, {{"Connection", "close, X-Engine-Hop, Content-Length"},
                        {"X-Engine-Hop", "a"},
                        {"Content-Length", "0"}});
    EXPECT_EQ(relayed_header(engine, BodyFraming::as_engine, true),
              "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: ensemble-worker\r\n\r\n");
}

// A Connection header naming thousands of fields (as many as 64 KiB of header holds), given
// in another order than the fields: each is found among the names (they are sorted and
// searched, so that such a request does not cost each field a scan of all the names).
TEST(HttpWire, AConnectionHeaderNamingManyFieldsHasThemAllDropped) {
    http::request_header<> client;
    client.method(http::verb::post);
    client.target("/v1/completions");
    std::string names;
    for (int i = 3000; i > 0; --i)
        names += "x-" + std::to_string(i) + ",";
    for (int i = 1; i <= 3000; ++i)
        client.insert("X-" + std::to_string(i), "v");
    client.insert("X-Kept", "k");
    client.insert("Connection", names);
    EXPECT_EQ(forwarded_header(client, "localhost", 0, false),
              "POST /v1/completions HTTP/1.1\r\nX-Kept: k\r\nHost: localhost\r\n"
              "Content-Length: 0\r\n\r\n");
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
