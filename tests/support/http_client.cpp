#include "tests/support/http_client.h"

#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>

namespace ensemble::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

std::string lowercase(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    return out;
}

// Runs one asynchronous operation to completion on `io`, under the stream's deadline.
template <typename Start>
boost::system::error_code run_op(asio::io_context& io, Start start) {
    boost::system::error_code result = asio::error::would_block;
    start([&](boost::system::error_code ec, std::size_t = 0) { result = ec; });
    io.restart();
    io.run();
    return result;
}

}  // namespace

std::string HttpResponse::header(const std::string& lowercase_name) const {
    const auto it = headers.find(lowercase_name);
    return it == headers.end() ? "" : it->second;
}

HttpRequest chat_request(const std::string& json_body, bool stream) {
    HttpRequest r;
    r.method = "POST";
    r.target = "/v1/chat/completions";
    r.body = json_body;
    r.headers["Content-Type"] = "application/json";
    if (stream) r.headers["Accept"] = "text/event-stream";
    return r;
}

HttpResponse http_request(unsigned short port, const HttpRequest& request,
                          const ChunkCallback& on_chunk) {
    return http_request(StreamEndpoint::tcp(asio::ip::address_v4::loopback(), port), request,
                        on_chunk);
}

namespace {

// Connects `stream` to `endpoint` by the deadline set on it; "" or why not.
std::string connect_stream(asio::io_context& io, stream_connection& stream,
                           const StreamEndpoint& endpoint) {
    const auto ec = run_op(io, [&](auto handler) {
        stream.async_connect(endpoint.endpoint(),
                             [handler](boost::system::error_code e) { handler(e); });
    });
    return ec ? "connect: " + ec.message() : "";
}

// One request and its response on a connected stream, by the deadline set on it (one deadline
// for the connect and the exchange). `keep_alive` says whether the stream may carry another
// request after it.
HttpResponse exchange(asio::io_context& io, stream_connection& stream, const std::string& host,
                      const HttpRequest& request, const ChunkCallback& on_chunk, bool& keep_alive) {
    keep_alive = false;
    HttpResponse out;
    http::request<http::string_body> req{http::string_to_verb(request.method), request.target, 11};
    req.set(http::field::host, host);
    for (const auto& [k, v] : request.headers)
        req.set(k, v);
    req.body() = request.body;
    if (!request.body.empty() || request.method == "POST") req.prepare_payload();
    auto ec = run_op(io, [&](auto handler) { http::async_write(stream, req, handler); });
    if (ec) {
        out.error = "write: " + ec.message();
        return out;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::uint64_t{1} << 32);
    if (request.method == "HEAD") parser.skip(true);  // a Content-Length, and no body after it
    bool stopped_by_callback = false;
    auto chunk_body = [&](std::uint64_t, beast::string_view body, boost::system::error_code&) {
        out.body.append(body.data(), body.size());
        if (on_chunk && !on_chunk({body.data(), body.size()})) stopped_by_callback = true;
        return body.size();
    };
    parser.on_chunk_body(chunk_body);
    ec =
        run_op(io, [&](auto handler) { http::async_read_header(stream, buffer, parser, handler); });
    if (!ec) {
        while (!parser.is_done() && !stopped_by_callback) {
            ec = run_op(
                io, [&](auto handler) { http::async_read_some(stream, buffer, parser, handler); });
            if (ec) break;
        }
    }
    if (parser.is_header_done()) {
        out.status = static_cast<int>(parser.get().result_int());
        for (const auto& field : parser.get()) {
            out.headers[lowercase({field.name_string().data(), field.name_string().size()})] =
                std::string(field.value());
        }
        if (!parser.chunked()) out.body = parser.get().body();
    }
    out.complete = parser.is_done();
    if (ec) out.error = ec.message();
    if (ec && !parser.is_header_done()) out.status = 0;
    keep_alive = out.complete && parser.keep_alive() && buffer.size() == 0;
    return out;
}

}  // namespace

HttpResponse http_request(const StreamEndpoint& endpoint, const HttpRequest& request,
                          const ChunkCallback& on_chunk) {
    asio::io_context io;
    stream_connection stream(io);
    stream.expires_after(request.timeout);
    if (auto failed = connect_stream(io, stream, endpoint); !failed.empty()) {
        HttpResponse out;
        out.error = std::move(failed);
        return out;
    }
    bool keep_alive = false;
    auto out = exchange(io, stream, endpoint.host(), request, on_chunk, keep_alive);
    boost::system::error_code ignored;
    stream.socket().shutdown(stream_protocol::socket::shutdown_both, ignored);
    return out;
}

struct KeptAliveConnection::State {
    explicit State(unsigned short port)
        : endpoint(StreamEndpoint::tcp(asio::ip::address_v4::loopback(), port)) {}
    StreamEndpoint endpoint;
    asio::io_context io;
    std::optional<stream_connection> stream;
};

KeptAliveConnection::KeptAliveConnection(unsigned short port)
    : state_(std::make_unique<State>(port)) {}

KeptAliveConnection::~KeptAliveConnection() = default;

HttpResponse KeptAliveConnection::request(const HttpRequest& request, bool& reused) {
    auto& stream = state_->stream;
    // What a pool does on checkout: a connection the server closed (or wrote to) while it was
    // idle is not used again.
    if (stream) {
        char byte = 0;
        const auto n = ::recv(stream->socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) stream.reset();
    }
    reused = stream.has_value();
    if (!reused) stream.emplace(state_->io);
    stream->expires_after(request.timeout);  // one deadline for the connect and the exchange
    if (!reused) {
        if (auto failed = connect_stream(state_->io, *stream, state_->endpoint); !failed.empty()) {
            stream.reset();
            HttpResponse out;
            out.error = std::move(failed);
            return out;
        }
    }
    bool keep_alive = false;
    auto out = exchange(state_->io, *stream, state_->endpoint.host(), request, {}, keep_alive);
    if (!keep_alive) stream.reset();
    return out;
}

std::string raw_exchange(unsigned short port, const std::string& bytes,
                         std::chrono::milliseconds timeout) {
    asio::io_context io;
    tcp_stream stream(io);
    stream.expires_after(timeout);
    auto ec = run_op(io, [&](auto handler) {
        stream.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), port),
                             [handler](boost::system::error_code e) { handler(e); });
    });
    if (ec) return "";
    ec = run_op(io, [&](auto handler) { asio::async_write(stream, asio::buffer(bytes), handler); });
    std::string received;
    char buf[4096];
    for (;;) {
        std::size_t n = 0;
        ec = run_op(io, [&](auto handler) {
            stream.async_read_some(asio::buffer(buf),
                                   [&, handler](boost::system::error_code e, std::size_t got) {
                                       n = got;
                                       handler(e);
                                   });
        });
        received.append(buf, n);
        if (ec) break;
    }
    return received;
}

unsigned short free_port() {
    return free_ports(1).front();
}

// Ports chosen in advance come from below the kernel's ephemeral range, so an engine binding
// port 0 in a concurrently running test can never take one before it is used. None is given
// twice in one process: a fixture and its test choose theirs in separate calls (a front door's
// pool port once came out as one of the supervisor fixture's model ports).
std::vector<unsigned short> free_ports(std::size_t n) {
    static std::mutex given_lock;
    static std::set<unsigned short> given;
    const std::lock_guard lock(given_lock);
    unsigned low = 32768;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low;
    const unsigned floor = 10000;
    if (low <= floor + 2000) low = 65535;  // unusual range: fall back to the top of the space
    std::mt19937 random(std::random_device{}());
    std::uniform_int_distribution<unsigned> pick(floor, low - 1);
    asio::io_context io;
    std::vector<tcp_acceptor> held;  // held until all are chosen, so none repeats
    std::vector<unsigned short> ports;
    while (ports.size() < n) {
        tcp_acceptor acceptor(io);
        boost::system::error_code ec;
        const auto port = static_cast<unsigned short>(pick(random));
        if (given.contains(port)) continue;
        acceptor.open(tcp::v4(), ec);
        if (!ec) acceptor.bind(tcp::endpoint(asio::ip::address_v4::loopback(), port), ec);
        if (ec) continue;
        held.push_back(std::move(acceptor));
        ports.push_back(port);
        given.insert(port);
    }
    return ports;
}

}  // namespace ensemble::testing
