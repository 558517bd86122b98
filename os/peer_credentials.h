// Who is on the other end of a connected Unix socket, as the kernel vouches for it
// (Linux: SO_PEERCRED; macOS: getpeereid, and LOCAL_PEERPID for the pid).
#pragma once

#include <sys/types.h>

#include "protocol/result.h"

namespace ensemble {

struct PeerCredentials {
    uid_t uid = 0;
    gid_t gid = 0;
    pid_t pid = 0;  // 0 when the OS does not say
};

Result<PeerCredentials> peer_credentials(int socket_fd);

}  // namespace ensemble
