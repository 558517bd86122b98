#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "os/peer_credentials.h"

namespace ensemble {

Result<PeerCredentials> peer_credentials(int socket_fd) {
    PeerCredentials peer;
    if (::getpeereid(socket_fd, &peer.uid, &peer.gid) != 0) {
        return Error{"peer_credentials",
                     std::string("cannot read the peer's credentials (getpeereid): ") +
                         std::strerror(errno)};
    }
    pid_t pid = 0;
    socklen_t length = sizeof pid;
    if (::getsockopt(socket_fd, SOL_LOCAL, LOCAL_PEERPID, &pid, &length) == 0) peer.pid = pid;
    return peer;
}

}  // namespace ensemble
