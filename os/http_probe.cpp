#include "os/http_probe.h"

#include "os/resource_shortage.h"
#include "os/stream_reads.h"

namespace ensemble {

awaitable<ProbeResult> http_probe(const StreamEndpoint& endpoint, const HttpProbe& probe,
                                  std::chrono::milliseconds timeout) {
    auto executor = co_await asio::this_coro::executor;
    stream_connection stream(executor);
    stream.expires_after(timeout);
    auto ec = co_await connect(stream, endpoint);
    if (ec && ec.category() == boost::system::system_category() &&
        is_own_resource_shortage(ec.value()))
        co_return ProbeResult{0, ec.message()};
    if (ec) co_return ProbeResult{};
    http::request<http::string_body> req{http::string_to_verb(probe.method), probe.path, 11};
    req.set(http::field::host, endpoint.host());
    if (!probe.body.empty()) {
        req.set(http::field::content_type, "application/json");
        req.body() = probe.body;
    }
    req.prepare_payload();
    co_await http::async_write(stream, req, on_error(ec));
    if (ec) co_return ProbeResult{};
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1 << 20);  // a probe's answer is small; never buffer an endless one
    co_await read_http(stream, buffer, parser, ec, PeerSent::nothing_since_we_wrote);
    if (ec) co_return ProbeResult{};
    stream.socket().shutdown(stream_protocol::socket::shutdown_both, ec);
    co_return ProbeResult{static_cast<int>(parser.get().result_int()), ""};
}

}  // namespace ensemble
