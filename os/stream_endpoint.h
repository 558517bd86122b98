// Where an HTTP server on this machine is reached: a TCP address and port, or a Unix-domain
// socket. The worker reaches its engine on a socket in a private folder where the engine can
// listen on one (no other local user can connect), else on a loopback port; its proxy and
// probes take this one type and speak HTTP either way.
#pragma once

#include <filesystem>
#include <string>

#include <boost/asio/generic/stream_protocol.hpp>

#include "os/asio.h"

namespace ensemble {

using stream_protocol = asio::generic::stream_protocol;
// An HTTP connection over either kind of socket, with Beast's deadlines.
using stream_connection = beast::basic_stream<stream_protocol, Executor>;
using stream_socket = asio::basic_stream_socket<stream_protocol, Executor>;
using stream_acceptor = asio::basic_socket_acceptor<stream_protocol, Executor>;

class StreamEndpoint {
  public:
    static StreamEndpoint tcp(const asio::ip::address& address, unsigned short port);
    static StreamEndpoint unix_socket(const std::filesystem::path& path);

    const stream_protocol::endpoint& endpoint() const { return endpoint_; }
    bool is_tcp() const { return is_tcp_; }
    // What a request's Host header names: "address:port", or "localhost" for a socket.
    const std::string& host() const { return host_; }
    // For logs: "127.0.0.1:41234" or "unix:/run/ensemble/engine-8100.sock".
    const std::string& describe() const { return description_; }

  private:
    StreamEndpoint(stream_protocol::endpoint endpoint, bool is_tcp, std::string host,
                   std::string description)
        : endpoint_(std::move(endpoint)),
          is_tcp_(is_tcp),
          host_(std::move(host)),
          description_(std::move(description)) {}

    stream_protocol::endpoint endpoint_;
    bool is_tcp_;
    std::string host_;
    std::string description_;
};

// Connects `connection` to `endpoint` (TCP with Nagle off: requests are small and answers
// stream). Fails with the connect's error.
awaitable<boost::system::error_code> connect(stream_connection& connection,
                                             const StreamEndpoint& endpoint);

}  // namespace ensemble
