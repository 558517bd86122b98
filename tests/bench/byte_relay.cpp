// ensemble-byte-relay: the floor of the proxy benchmark. It accepts TCP connections on a
// loopback port and pipes each, byte for byte, to a connection of its own to the engine's Unix
// socket: one epoll loop, no parsing, no copying beyond one read and one write per burst. No
// proxy that reads HTTP can cost less; what it leaves between itself and nginx is what a faster
// event loop could win at most. Linux only, for tests/bench/proxy_bench.cpp.
//   ensemble-byte-relay PORT ENGINE_SOCKET
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

namespace {

// One direction of a connection pair: bytes read from `from` and not yet taken by `to`. While
// some wait, `from` is not read and `to` is watched for room.
struct Pipe {
    int from = -1;
    int to = -1;
    std::string pending;
    std::uint32_t from_interest = EPOLLIN;  // as last given to epoll for `from`
};

// A client's connection and its own connection to the engine.
struct Pair {
    Pipe up;    // client -> engine
    Pipe down;  // engine -> client
};

class Relay {
  public:
    Relay(int listener, std::string engine_socket)
        : listener_(listener), engine_socket_(std::move(engine_socket)) {
        epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
        watch(listener_, EPOLLIN, EPOLL_CTL_ADD);
    }

    [[noreturn]] void run() {
        std::array<epoll_event, 64> events{};
        for (;;) {
            const int n = ::epoll_wait(epoll_, events.data(), events.size(), -1);
            for (int i = 0; i < n; ++i) {
                const int fd = events[i].data.fd;
                if (fd == listener_) {
                    accept_all();
                } else if (auto it = pairs_.find(fd); it != pairs_.end()) {
                    on_ready(it->second, fd, events[i].events);
                }
            }
        }
    }

  private:
    void watch(int fd, std::uint32_t what, int op) const {
        epoll_event event{};
        event.events = what;
        event.data.fd = fd;
        ::epoll_ctl(epoll_, op, fd, &event);
    }

    void accept_all() {
        for (;;) {
            const int client = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (client < 0) return;
            const int one = 1;
            ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            const int engine = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_un address{};
            address.sun_family = AF_UNIX;
            std::strncpy(address.sun_path, engine_socket_.c_str(), sizeof address.sun_path - 1);
            if (::connect(engine, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
                std::perror("ensemble-byte-relay: connect to the engine");
                ::close(engine);
                ::close(client);
                continue;
            }
            ::fcntl(engine, F_SETFL, O_NONBLOCK);
            auto pair = std::make_shared<Pair>();
            pair->up = {client, engine, {}};
            pair->down = {engine, client, {}};
            pairs_[client] = pair;
            pairs_[engine] = pair;
            watch(client, EPOLLIN, EPOLL_CTL_ADD);
            watch(engine, EPOLLIN, EPOLL_CTL_ADD);
        }
    }

    void on_ready(const std::shared_ptr<Pair>& pair, int fd, std::uint32_t what) {
        Pipe& inbound = fd == pair->up.from ? pair->up : pair->down;
        Pipe& outbound = fd == pair->up.from ? pair->down : pair->up;
        bool open = true;
        if ((what & EPOLLOUT) != 0) open = flush(outbound);
        if (open && (what & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0 && inbound.pending.empty())
            open = pump(inbound);
        if (!open) return close_pair(pair);
        update_interest(*pair);
    }

    // Reads what `pipe.from` has and passes it on; false when the connection ended.
    bool pump(Pipe& pipe) {
        std::array<char, 64 * 1024> buffer;
        const auto n = ::read(pipe.from, buffer.data(), buffer.size());
        if (n == 0) return false;
        if (n < 0) return errno == EAGAIN || errno == EINTR;
        pipe.pending.assign(buffer.data(), static_cast<std::size_t>(n));
        return flush(pipe);
    }

    // Writes what is pending, as much as the socket takes; false when the connection ended.
    static bool flush(Pipe& pipe) {
        while (!pipe.pending.empty()) {
            const auto n = ::write(pipe.to, pipe.pending.data(), pipe.pending.size());
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return errno == EAGAIN;
            pipe.pending.erase(0, static_cast<std::size_t>(n));
        }
        return true;
    }

    // Each socket is read unless what it sent still waits, and watched for room while what it
    // is sent waits: epoll is told only of a change (none in the usual exchange).
    void update_interest(Pair& pair) const {
        for (auto [inbound, outbound] : {std::pair{&pair.up, &pair.down}, {&pair.down, &pair.up}}) {
            const std::uint32_t interest = (inbound->pending.empty() ? EPOLLIN : 0U) |
                                           (outbound->pending.empty() ? 0U : EPOLLOUT);
            if (interest == inbound->from_interest) continue;
            inbound->from_interest = interest;
            watch(inbound->from, interest, EPOLL_CTL_MOD);
        }
    }

    void close_pair(const std::shared_ptr<Pair>& pair) {
        const auto keep = pair;  // the map holds the last references
        for (const int fd : {keep->up.from, keep->down.from}) {
            pairs_.erase(fd);
            ::close(fd);
        }
    }

    int listener_;
    std::string engine_socket_;
    int epoll_ = -1;
    std::unordered_map<int, std::shared_ptr<Pair>> pairs_;
};

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // a peer that left is an error from write, not the end
    if (argc != 3) {
        std::fprintf(stderr, "usage: ensemble-byte-relay PORT ENGINE_SOCKET\n");
        return 2;
    }
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(std::atoi(argv[1])));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(listener, 511) != 0) {
        std::perror("ensemble-byte-relay: listen");
        return 1;
    }
    Relay(listener, argv[2]).run();
}
