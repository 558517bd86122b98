#include "supervisor/socket_servers.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <boost/asio/write.hpp>
#include <cstring>
#include <deque>

#include "os/peer_credentials.h"
#include "protocol/framing.h"

namespace ensemble {

namespace {

// Only the supervisor's own user (or root) may talk to it.
bool peer_allowed(unix_socket::socket& socket) {
    const auto peer = peer_credentials(socket.native_handle());
    return peer && (peer->uid == ::geteuid() || peer->uid == 0);
}

// Writes frames one after another; a connection never has two writes in flight. The writer
// coroutine holds `owner` (what owns the socket and this writer) until its last write is done:
// the session may end, and drop its reference, while a write is still in flight.
class FrameWriter {
  public:
    explicit FrameWriter(unix_socket::socket& socket) : socket_(socket) {}
    void send(const nlohmann::json& message, asio::io_context& io, std::shared_ptr<void> owner) {
        queue_.push_back(protocol::encode_frame(message));
        if (writing_) return;
        writing_ = true;  // before spawning: a second send must not start a second writer
        asio::co_spawn(io, drain(std::move(owner)), asio::detached);
    }

  private:
    awaitable<void> drain(std::shared_ptr<void> owner) {
        while (!queue_.empty()) {
            boost::system::error_code ec;
            co_await asio::async_write(socket_, asio::buffer(queue_.front()), on_error(ec));
            queue_.pop_front();
            if (ec) queue_.clear();
        }
        writing_ = false;
        owner.reset();
    }
    unix_socket::socket& socket_;
    std::deque<std::string> queue_;
    bool writing_ = false;
};

class LinkPeer final : public WorkerLinkPeer, public std::enable_shared_from_this<LinkPeer> {
  public:
    LinkPeer(asio::io_context& io, unix_socket::socket socket)
        : io_(io), socket_(std::move(socket)), writer_(socket_) {}
    void send(const nlohmann::json& message) override {
        writer_.send(message, io_, shared_from_this());
    }
    void close() override {
        boost::system::error_code ec;
        socket_.close(ec);
    }
    unix_socket::socket& socket() { return socket_; }

  private:
    asio::io_context& io_;
    unix_socket::socket socket_;
    FrameWriter writer_;
};

awaitable<void> link_session(asio::io_context& io, std::shared_ptr<LinkPeer> peer, Fleet& fleet) {
    protocol::FrameDecoder decoder;
    std::array<char, 8192> buffer{};
    bool registered = false;
    for (;;) {
        boost::system::error_code ec;
        const auto n = co_await peer->socket().async_read_some(asio::buffer(buffer), on_error(ec));
        if (ec) break;
        decoder.feed({buffer.data(), n});
        while (auto frame = decoder.next()) {
            auto message = *frame ? protocol::parse_worker_message(frame->value())
                                  : Result<protocol::WorkerMessage>(frame->error());
            if (!message) {
                peer->send(protocol::error_reply(message.error()));
                continue;
            }
            if (const auto* reg = std::get_if<protocol::Register>(&*message)) {
                auto ok = fleet.on_register(peer.get(), *reg);
                peer->send(ok ? protocol::registered_message() : protocol::error_reply(ok.error()));
                registered = static_cast<bool>(ok);
            } else if (!registered) {
                peer->send(protocol::error_reply(
                    Error{"not_registered", "register before sending heartbeats"}));
            } else {
                fleet.on_heartbeat(peer.get(), std::get<protocol::Heartbeat>(*message).stats);
            }
        }
    }
    fleet.on_link_closed(peer.get());
    (void)io;
}

awaitable<void> control_session(asio::io_context& io, unix_socket::socket socket, Fleet& fleet) {
    if (!peer_allowed(socket)) {
        spdlog::warn("control: refused a connection from another user");
        co_return;
    }
    protocol::FrameDecoder decoder;
    std::array<char, 8192> buffer{};
    for (;;) {
        boost::system::error_code ec;
        const auto n = co_await socket.async_read_some(asio::buffer(buffer), on_error(ec));
        if (ec) co_return;
        decoder.feed({buffer.data(), n});
        while (auto frame = decoder.next()) {
            nlohmann::json reply;
            if (!*frame) {
                reply = protocol::error_reply(frame->error());
            } else if (auto request = protocol::parse_control_request(frame->value()); !request) {
                reply = protocol::error_reply(request.error());
            } else {
                reply = co_await fleet.handle(*request);
            }
            const auto bytes = protocol::encode_frame(reply);
            co_await asio::async_write(socket, asio::buffer(bytes), on_error(ec));
            if (ec) co_return;
        }
    }
    (void)io;
}

awaitable<void> accept_loop(asio::io_context& io, unix_socket::acceptor& acceptor, Fleet& fleet,
                            bool worker_links) {
    for (;;) {
        boost::system::error_code ec;
        auto socket = co_await acceptor.async_accept(on_error(ec));
        if (ec == asio::error::operation_aborted) co_return;
        if (ec) continue;
        if (worker_links) {
            if (!peer_allowed(socket)) continue;
            auto peer = std::make_shared<LinkPeer>(io, std::move(socket));
            asio::co_spawn(io, link_session(io, peer, fleet), asio::detached);
        } else {
            asio::co_spawn(io, control_session(io, std::move(socket), fleet), asio::detached);
        }
    }
}

}  // namespace

Result<std::unique_ptr<unix_socket::acceptor>> listen_unix(asio::io_context& io,
                                                           const std::filesystem::path& dir,
                                                           const std::string& name) {
    std::error_code fs_ec;
    std::filesystem::create_directories(dir, fs_ec);
    if (fs_ec || ::chmod(dir.c_str(), 0700) != 0) {
        return Error{"run_dir",
                     "cannot create the private run directory " + dir.string() +
                         " (mode 0700): " + (fs_ec ? fs_ec.message() : std::strerror(errno))};
    }
    const auto path = dir / name;
    if (auto too_long = protocol::check_socket_path(path.string())) return *too_long;
    if (std::filesystem::exists(path)) {
        unix_socket::socket probe(io);
        boost::system::error_code ec;
        probe.connect(unix_socket::endpoint(path.string()), ec);
        if (!ec)
            return Error{"already_running",
                         "another ensembled is already listening on " + path.string()};
        std::filesystem::remove(path, fs_ec);
    }
    auto acceptor = std::make_unique<unix_socket::acceptor>(io);
    boost::system::error_code ec;
    acceptor->open(unix_socket(), ec);
    if (!ec) acceptor->bind(unix_socket::endpoint(path.string()), ec);
    if (!ec && ::chmod(path.c_str(), 0600) != 0)
        ec = boost::system::error_code(errno, boost::system::system_category());
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error{"listen", "cannot listen on " + path.string() + ": " + ec.message()};
    return acceptor;
}

void serve_control(asio::io_context& io, unix_socket::acceptor& acceptor, Fleet& fleet) {
    asio::co_spawn(io, accept_loop(io, acceptor, fleet, false), asio::detached);
}

void serve_worker_links(asio::io_context& io, unix_socket::acceptor& acceptor, Fleet& fleet) {
    asio::co_spawn(io, accept_loop(io, acceptor, fleet, true), asio::detached);
}

}  // namespace ensemble
