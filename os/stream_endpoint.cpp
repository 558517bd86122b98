#include "os/stream_endpoint.h"

#include <boost/asio/local/stream_protocol.hpp>

namespace ensemble {

StreamEndpoint StreamEndpoint::tcp(const asio::ip::address& address, unsigned short port) {
    const tcp::endpoint endpoint(address, port);
    std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
    host += ":" + std::to_string(port);
    return {stream_protocol::endpoint(endpoint), true, host, host};
}

StreamEndpoint StreamEndpoint::unix_socket(const std::filesystem::path& path) {
    const asio::local::stream_protocol::endpoint endpoint(path.string());
    return {stream_protocol::endpoint(endpoint), false, "localhost", "unix:" + path.string()};
}

awaitable<boost::system::error_code> connect(stream_connection& connection,
                                             const StreamEndpoint& endpoint) {
    boost::system::error_code ec;
    co_await connection.async_connect(endpoint.endpoint(), on_error(ec));
    if (!ec && endpoint.is_tcp()) {
        boost::system::error_code ignored;  // Nagle only delays; a refusal changes nothing
        connection.socket().set_option(tcp::no_delay(true), ignored);
    }
    co_return ec;
}

}  // namespace ensemble
