#include "os/listening_socket.h"

#include "os/port_holder.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "os/resource_shortage.h"

namespace ensemble {

namespace {

// The port of a bound socket, or 0.
int bound_port(int fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
    if (address.ss_family == AF_INET)
        return ntohs(reinterpret_cast<const sockaddr_in&>(address).sin_port);
    if (address.ss_family == AF_INET6)
        return ntohs(reinterpret_cast<const sockaddr_in6&>(address).sin6_port);
    return 0;
}

// Whether the socket's bound address is the one `host` names.
bool bound_address_is(int fd, const std::string& host) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return false;
    if (address.ss_family == AF_INET) {
        in_addr wanted{};
        return ::inet_pton(AF_INET, host.c_str(), &wanted) == 1 &&
               std::memcmp(&wanted, &reinterpret_cast<const sockaddr_in&>(address).sin_addr,
                           sizeof wanted) == 0;
    }
    if (address.ss_family == AF_INET6) {
        in6_addr wanted{};
        return ::inet_pton(AF_INET6, host.c_str(), &wanted) == 1 &&
               std::memcmp(&wanted, &reinterpret_cast<const sockaddr_in6&>(address).sin6_addr,
                           sizeof wanted) == 0;
    }
    return false;
}

}  // namespace

bool ListeningSocket::bound_to(const std::string& host) const {
    return fd_ >= 0 && bound_address_is(fd_, host);
}

Result<ListeningSocket> ListeningSocket::open(const std::string& host, int port) {
    sockaddr_storage address{};
    socklen_t length = 0;
    int family = AF_INET;
    auto& v4 = reinterpret_cast<sockaddr_in&>(address);
    auto& v6 = reinterpret_cast<sockaddr_in6&>(address);
    if (::inet_pton(AF_INET, host.c_str(), &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons(static_cast<std::uint16_t>(port));
        length = sizeof v4;
    } else if (::inet_pton(AF_INET6, host.c_str(), &v6.sin6_addr) == 1) {
        family = AF_INET6;
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(static_cast<std::uint16_t>(port));
        length = sizeof v6;
    } else {
        return Error{"bad_host", "bind_host '" + host + "' is not an IP address"};
    }
    const auto where = host + ":" + std::to_string(port);
    const int fd = ::socket(family, SOCK_STREAM, 0);
    if (fd < 0) {
        const int error = errno;
        return Error{is_own_resource_shortage(error) ? "no_resources" : "listen_failed",
                     "cannot open a socket for " + where + ": " + std::strerror(error)};
    }
    ListeningSocket socket(fd);
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // only the worker it is handed to gets it
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
        const int error = errno;
        if (error == EADDRINUSE) {
            return Error{"port_busy", "port " + std::to_string(port) + " on " + host +
                                          " is in use by another process (" +
                                          port_holder_hint(port) +
                                          "); stop it or choose another port"};
        }
        return Error{is_own_resource_shortage(error) ? "no_resources" : "listen_failed",
                     "cannot bind " + where + ": " + std::strerror(error)};
    }
    if (::listen(fd, SOMAXCONN) != 0) {
        const int error = errno;
        return Error{"listen_failed", "cannot listen on " + where + ": " + std::strerror(error)};
    }
    return socket;
}

Result<ListeningSocket> ListeningSocket::take(int fd, int port) {
    ListeningSocket socket(fd);
    if (auto ok = check_listening_socket(fd, port); !ok) return ok.error();  // closed with it
    return socket;
}

ListeningSocket::ListeningSocket(ListeningSocket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)) {}

ListeningSocket& ListeningSocket::operator=(ListeningSocket&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

ListeningSocket::~ListeningSocket() {
    close();
}

void ListeningSocket::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

Status check_listening_socket(int fd, int port, const std::string& host) {
    const auto refuse = [&](const std::string& why) {
        return Error{"no_listening_socket",
                     "descriptor " + std::to_string(fd) + " is not the listening socket of port " +
                         std::to_string(port) + ": " + why +
                         " (a supervised worker is started by ensembled, which passes it)"};
    };
    int type = 0;
    socklen_t length = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0)
        return refuse(errno == EBADF ? "it is not open" : "it is not a socket");
    if (type != SOCK_STREAM) return refuse("it is not a stream socket");
    int listening = 0;
    length = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 || listening == 0)
        return refuse("it does not listen");
    if (const int bound = bound_port(fd); bound != port)
        return refuse("it is bound to port " + std::to_string(bound));
    if (!host.empty() && !bound_address_is(fd, host)) return refuse("it is not bound to " + host);
    return Ok{};
}

}  // namespace ensemble
