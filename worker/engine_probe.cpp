#include "worker/engine_probe.h"

namespace ensemble {

awaitable<int> probe_engine(unsigned short port, const ReadinessProbe& probe,
                            std::chrono::milliseconds timeout, asio::ip::address host) {
    auto executor = co_await asio::this_coro::executor;
    beast::tcp_stream stream(executor);
    boost::system::error_code ec;
    stream.expires_after(timeout);
    const tcp::endpoint endpoint(host, port);
    co_await stream.async_connect(endpoint, on_error(ec));
    if (ec) co_return 0;
    http::request<http::string_body> req{http::string_to_verb(probe.method), probe.path, 11};
    req.set(http::field::host, endpoint.address().to_string() + ":" + std::to_string(port));
    if (!probe.body.empty()) {
        req.set(http::field::content_type, "application/json");
        req.body() = probe.body;
    }
    req.prepare_payload();
    co_await http::async_write(stream, req, on_error(ec));
    if (ec) co_return 0;
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    co_await http::async_read(stream, buffer, res, on_error(ec));
    if (ec) co_return 0;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    co_return res.result_int();
}

}  // namespace ensemble
