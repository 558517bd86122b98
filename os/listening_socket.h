// A listening TCP socket that outlives the processes accepting on it. ensembled holds each
// public port's for as long as the port is assigned and passes it to every worker it starts (as
// descriptor protocol::kListenFd): connections made while no worker accepts — a worker killed,
// restarted, swapped — wait in the kernel's backlog for the next one instead of being refused.
#pragma once

#include <string>
#include <utility>

#include "protocol/result.h"

namespace ensemble {

class ListeningSocket {
  public:
    // Binds host:port (SO_REUSEADDR, close-on-exec) and listens. Errors: "bad_host",
    // "port_busy" (another process holds it; the message says how to find it), "no_resources"
    // (ensembled's own shortage), "listen_failed".
    static Result<ListeningSocket> open(const std::string& host, int port);
    // Takes `fd` (received from a worker): kept when it is a socket listening on `port`,
    // closed otherwise (the error says why, as check_listening_socket).
    static Result<ListeningSocket> take(int fd, int port);

    ListeningSocket() = default;
    ListeningSocket(ListeningSocket&& other) noexcept;
    ListeningSocket& operator=(ListeningSocket&& other) noexcept;
    ListeningSocket(const ListeningSocket&) = delete;
    ListeningSocket& operator=(const ListeningSocket&) = delete;
    ~ListeningSocket();

    bool is_open() const { return fd_ >= 0; }
    // Whether it is bound to the address `host` names ("127.0.0.1", "::1", "0.0.0.0").
    bool bound_to(const std::string& host) const;
    int fd() const { return fd_; }
    // Hands the descriptor over (to an acceptor that will own it); this object is then empty.
    int release() { return std::exchange(fd_, -1); }
    void close();

  private:
    explicit ListeningSocket(int fd) : fd_(fd) {}
    int fd_ = -1;
};

// For a worker handed a listening socket: Ok when `fd` is an open TCP socket listening on
// `port` (and, when `host` is given, bound to it); otherwise why not ("no_listening_socket").
Status check_listening_socket(int fd, int port, const std::string& host = "");

}  // namespace ensemble
