#include "tests/bench/keepalive_load.h"

#include <algorithm>

namespace ensemble::bench {

namespace {

using Clock = std::chrono::steady_clock;

awaitable<void> one_connection(const StreamEndpoint& target, const std::string& request,
                               Clock::time_point until, LoadResult& result) {
    auto executor = co_await asio::this_coro::executor;
    stream_connection stream(executor);
    auto ec = co_await connect(stream, target);
    if (ec) {
        ++result.errors;
        co_return;
    }
    beast::flat_buffer buffer;
    while (Clock::now() < until) {
        const auto start = Clock::now();
        co_await asio::async_write(stream, asio::buffer(request), on_error(ec));
        http::response<http::string_body> response;
        if (!ec) co_await http::async_read(stream, buffer, response, on_error(ec));
        if (ec || response.result() != http::status::ok) {
            ++result.errors;
            break;
        }
        result.latencies_ms.push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - start).count());
        if (!response.keep_alive()) {  // reconnect, as a client would
            stream.close();
            ec = co_await connect(stream, target);
            if (ec) {
                ++result.errors;
                break;
            }
        }
    }
}

}  // namespace

LoadResult run_keepalive_load(const StreamEndpoint& target, const std::string& request,
                              int connections, std::chrono::milliseconds duration) {
    asio::io_context io;
    LoadResult result;
    const auto start = Clock::now();
    const auto until = start + duration;
    for (int i = 0; i < connections; ++i)
        asio::co_spawn(io, one_connection(target, request, until, result), asio::detached);
    io.run();
    result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return result;
}

std::string raw_post(const std::string& target_path, const std::string& body) {
    return "POST " + target_path +
           " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

double percentile(std::vector<double> values, double p) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const auto i = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
    return values[std::min(i, values.size() - 1)];
}

}  // namespace ensemble::bench
