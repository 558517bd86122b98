#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "os/peer_credentials.h"

namespace ensemble {

Result<PeerCredentials> peer_credentials(int socket_fd) {
    ucred cred{};
    socklen_t length = sizeof cred;
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
        return Error{"peer_credentials",
                     std::string("cannot read the peer's credentials (SO_PEERCRED): ") +
                         std::strerror(errno)};
    }
    return PeerCredentials{cred.uid, cred.gid, cred.pid};
}

}  // namespace ensemble
