#include "supervisor/socket_servers.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>

#include "os/descriptor_limit.h"
#include "os/descriptor_passing.h"
#include "os/peer_credentials.h"
#include "os/stream_reads.h"
#include "protocol/framing.h"

namespace ensemble {

namespace {

using Clock = std::chrono::steady_clock;

// What one listener allows: connections at once, and how long one may say nothing.
struct ListenerLimits {
    std::size_t max_connections;
    std::chrono::seconds idle_timeout;
};

// Both listeners together hold at most about 9/16 of the descriptor limit, so that ensembled
// always keeps descriptors for spawning, logging and probing however many connections arrive.
// control.sock: the CLI sends a request and waits; one that says nothing for a minute is
// closed. workers.sock: one link per worker, a heartbeat every second.
ListenerLimits limits_for(bool worker_links) {
    const auto limit = std::min<std::uint64_t>(descriptor_limit(), 1U << 20);
    if (worker_links)
        return {std::clamp<std::size_t>(limit / 2, 16, 4096), std::chrono::seconds(30)};
    return {std::clamp<std::size_t>(limit / 16, 4, 64), std::chrono::seconds(60)};
}

// The live connections of one listener, so that idle ones are closed and a full listener makes
// room by closing its longest-idle connection — a flood of idle connections can neither starve
// ensembled of descriptors nor lock the operator out.
class Connections {
  public:
    struct Entry {
        unix_socket::socket* socket;
        Clock::time_point last_active;
        bool busy = false;  // handling a request, or a registered worker's link: never evicted
    };
    using Handle = std::list<Entry>::iterator;

    explicit Connections(ListenerLimits limits) : limits_(limits) {}
    Handle add(unix_socket::socket& socket) {
        return entries_.insert(entries_.end(), Entry{&socket, Clock::now()});
    }
    void remove(Handle entry) { entries_.erase(entry); }
    // Whether one more may be served, after closing the longest-idle connection if need be.
    bool make_room() {
        if (entries_.size() < limits_.max_connections) return true;
        Entry* oldest = nullptr;
        for (auto& e : entries_) {
            if (!e.busy && (oldest == nullptr || e.last_active < oldest->last_active)) oldest = &e;
        }
        if (oldest == nullptr) return false;
        close(*oldest);
        return true;
    }
    void close_idle(Clock::time_point now) {
        for (auto& e : entries_) {
            if (!e.busy && now - e.last_active > limits_.idle_timeout) close(e);
        }
    }
    const ListenerLimits& limits() const { return limits_; }

  private:
    // The session's pending read fails at once; the session then removes its entry.
    static void close(Entry& e) {
        boost::system::error_code ec;
        e.socket->close(ec);
        e.busy = true;  // closing: not chosen again
    }
    ListenerLimits limits_;
    std::list<Entry> entries_;
};

// A session's place in its listener's connections, given back however the session ends (an
// exception included: the list must never keep a socket that is gone).
class ConnectionEntry {
  public:
    ConnectionEntry(std::shared_ptr<Connections> connections, unix_socket::socket& socket)
        : connections_(std::move(connections)), entry_(connections_->add(socket)) {}
    ~ConnectionEntry() { connections_->remove(entry_); }
    ConnectionEntry(const ConnectionEntry&) = delete;
    ConnectionEntry& operator=(const ConnectionEntry&) = delete;
    Connections::Entry* operator->() const { return &*entry_; }

  private:
    std::shared_ptr<Connections> connections_;
    Connections::Handle entry_;
};

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
        : io_(io), socket_(std::move(socket)), writer_(socket_) {
        // Named now, while the kernel vouches for the connection: a pid read later could
        // belong to another process.
        if (const auto peer = peer_credentials(socket_.native_handle()); peer && peer->pid > 1) {
            if (auto identity = identify_process(peer->pid)) identity_ = *identity;
        }
    }
    void send(const nlohmann::json& message) override {
        writer_.send(message, io_, shared_from_this());
    }
    void close() override {
        boost::system::error_code ec;
        socket_.close(ec);
    }
    std::optional<ProcessIdentity> identity() const override { return identity_; }
    unix_socket::socket& socket() { return socket_; }

  private:
    asio::io_context& io_;
    unix_socket::socket socket_;
    FrameWriter writer_;
    std::optional<ProcessIdentity> identity_;
};

awaitable<void> link_session(asio::io_context& io, std::shared_ptr<LinkPeer> peer, Fleet& fleet,
                             FrontDoorKeeper& front_door,
                             std::shared_ptr<Connections> connections) {
    const ConnectionEntry entry(std::move(connections), peer->socket());
    protocol::FrameDecoder decoder;
    std::array<char, 8192> buffer{};
    bool registered = false;
    bool front = false;  // the front door's link, not a model worker's
    // A descriptor that came before or with the registration: the worker's listening socket,
    // handed back (os/descriptor_passing.h). Any other is closed at once.
    std::optional<int> handed;
    struct CloseUnused {
        std::optional<int>& fd;
        ~CloseUnused() {
            if (fd) ::close(*fd);
        }
    } close_unused{handed};
    for (;;) {
        boost::system::error_code ec;
        co_await peer->socket().async_wait(unix_socket::socket::wait_read, on_error(ec));
        if (ec) break;
        auto got = receive_with_descriptors(peer->socket().native_handle(), buffer);
        if (!got && got.error().code == "would_block") continue;
        if (!got || got->bytes == 0) break;
        for (const int fd : got->descriptors) {
            if (!registered && !handed) {
                handed = fd;
            } else {
                ::close(fd);
            }
        }
        const auto n = got->bytes;
        entry->last_active = Clock::now();
        decoder.feed({buffer.data(), n});
        while (auto frame = decoder.next()) {
            auto message = *frame ? protocol::parse_worker_message(frame->value())
                                  : Result<protocol::WorkerMessage>(frame->error());
            if (!message) {
                peer->send(protocol::error_reply(message.error()));
                continue;
            }
            if (const auto* reg = std::get_if<protocol::Register>(&*message)) {
                std::optional<ListeningSocket> port_socket;
                if (handed) {
                    auto taken =
                        ListeningSocket::take(*std::exchange(handed, std::nullopt), reg->port);
                    if (taken) {
                        port_socket = std::move(taken).value();
                    } else {
                        spdlog::warn("workers.sock: {}", taken.error().message);
                    }
                }
                if (registered) {
                    peer->send(protocol::error_reply(
                        Error{"already_registered", "this connection is registered already"}));
                    continue;
                }
                front = reg->front_door;
                auto ok = front ? front_door.on_register(peer.get(), *reg, std::move(port_socket))
                                : fleet.on_register(peer.get(), *reg, std::move(port_socket));
                peer->send(ok ? protocol::registered_message() : protocol::error_reply(ok.error()));
                // A worker that cannot be adopted is told to stop: never left serving unmanaged.
                if (!ok) peer->send(protocol::stop_message());
                registered = static_cast<bool>(ok);
                entry->busy = registered;  // a worker's link is never evicted for a newcomer
            } else if (!registered) {
                peer->send(protocol::error_reply(Error{"not_registered", "register first"}));
            } else if (std::holds_alternative<protocol::Demand>(*message) ||
                       std::holds_alternative<protocol::KeepAlive>(*message)) {
                if (!front) {
                    peer->send(protocol::error_reply(Error{
                        "not_front_door", "only the front door asks for loads and keep_alive"}));
                } else if (const auto* demand = std::get_if<protocol::Demand>(&*message)) {
                    front_door.on_demand(peer.get(), *demand);
                } else {
                    front_door.on_keep_alive(peer.get(), std::get<protocol::KeepAlive>(*message));
                }
            } else if (!front) {
                fleet.on_heartbeat(peer.get(), std::get<protocol::Heartbeat>(*message).stats);
            }
        }
    }
    if (front) {
        front_door.on_link_closed(peer.get());
    } else {
        fleet.on_link_closed(peer.get());
    }
    (void)io;
}

awaitable<void> control_requests(unix_socket::socket& socket, ControlApi& api,
                                 const ConnectionEntry& entry) {
    protocol::FrameDecoder decoder;
    std::array<char, 8192> buffer{};
    for (;;) {
        // (A client that closed its side with its last request is seen now, not when the idle
        // sweep comes: os/stream_reads.h.)
        boost::system::error_code ec;
        const auto into = asio::buffer(buffer);
        const auto n = co_await read_more(socket, into, ec);
        if (ec) co_return;
        decoder.feed({buffer.data(), n});
        while (auto frame = decoder.next()) {
            nlohmann::json reply;
            entry->busy = true;
            if (!*frame) {
                reply = protocol::error_reply(frame->error());
            } else if (auto request = protocol::parse_control_request(frame->value()); !request) {
                reply = protocol::error_reply(request.error());
            } else {
                reply = co_await api.handle(*request);
            }
            const auto bytes = protocol::encode_frame(reply);
            co_await asio::async_write(socket, asio::buffer(bytes), on_error(ec));
            entry->busy = false;
            entry->last_active = Clock::now();
            if (ec) co_return;
        }
    }
}

awaitable<void> control_session(unix_socket::socket socket, ControlApi& api,
                                std::shared_ptr<Connections> connections) {
    if (!peer_allowed(socket)) {
        spdlog::warn("control: refused a connection from another user");
        co_return;
    }
    const ConnectionEntry entry(std::move(connections), socket);
    co_await control_requests(socket, api, entry);
}

// Refuses a connection the listener has no room for, saying why (control.sock only: a worker
// simply reconnects).
awaitable<void> refuse_control(unix_socket::socket socket, std::size_t limit) {
    const auto reply = protocol::error_reply(
        Error{"too_many_connections", "ensembled is already answering " + std::to_string(limit) +
                                          " control requests at once; try again in a moment"});
    const auto bytes = protocol::encode_frame(reply);
    boost::system::error_code ec;
    co_await asio::async_write(socket, asio::buffer(bytes), on_error(ec));
}

// Closes the listener's idle connections, once a second, for as long as it accepts.
awaitable<void> sweep_idle(asio::io_context& io, std::shared_ptr<Connections> connections) {
    steady_timer timer(io);
    for (;;) {
        timer.expires_after(std::chrono::seconds(1));
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        // Only the sweeper left: the accept loop and every session have ended.
        if (ec || connections.use_count() == 1) co_return;
        connections->close_idle(Clock::now());
    }
}

// One accepted connection that the listener has room for, handed to its session.
using StartSession =
    std::function<void(unix_socket::socket socket, std::shared_ptr<Connections> connections)>;

awaitable<void> accept_loop(asio::io_context& io, unix_socket::acceptor& acceptor,
                            bool worker_links, StartSession start_session) {
    // Shared with the sweeper and every session: it lives as long as the last of them.
    auto connections = std::make_shared<Connections>(limits_for(worker_links));
    asio::co_spawn(io, sweep_idle(io, connections), asio::detached);
    const char* const name = worker_links ? "workers.sock" : "control.sock";
    Clock::time_point last_warning{};
    for (;;) {
        boost::system::error_code ec;
        auto socket = co_await acceptor.async_accept(on_error(ec));
        if (ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // Out of descriptors, most likely: say so now and then, and pause rather than spin.
            if (Clock::now() - last_warning > std::chrono::seconds(10)) {
                last_warning = Clock::now();
                spdlog::warn("{}: cannot accept a connection: {} (ensembled's own trouble)", name,
                             ec.message());
            }
            steady_timer pause(io, std::chrono::milliseconds(100));
            co_await pause.async_wait(on_error(ec));
            continue;
        }
        if (!connections->make_room()) {
            if (!worker_links) {
                const auto limit = connections->limits().max_connections;
                asio::co_spawn(io, refuse_control(std::move(socket), limit), asio::detached);
            }
            continue;
        }
        start_session(std::move(socket), connections);
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
    if (auto fits = protocol::check_socket_path(path.string()); !fits) return fits.error();
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

void serve_control(asio::io_context& io, unix_socket::acceptor& acceptor, ControlApi& api) {
    StartSession start = [&io, &api](unix_socket::socket socket,
                                     std::shared_ptr<Connections> connections) {
        asio::co_spawn(io, control_session(std::move(socket), api, std::move(connections)),
                       asio::detached);
    };
    asio::co_spawn(io, accept_loop(io, acceptor, false, std::move(start)), asio::detached);
}

void serve_worker_links(asio::io_context& io, unix_socket::acceptor& acceptor, Fleet& fleet,
                        FrontDoorKeeper& front_door) {
    StartSession start = [&io, &fleet, &front_door](unix_socket::socket socket,
                                                    std::shared_ptr<Connections> connections) {
        if (!peer_allowed(socket)) return;
        auto peer = std::make_shared<LinkPeer>(io, std::move(socket));
        asio::co_spawn(io, link_session(io, peer, fleet, front_door, std::move(connections)),
                       asio::detached);
    };
    asio::co_spawn(io, accept_loop(io, acceptor, true, std::move(start)), asio::detached);
}

}  // namespace ensemble
