// Sending a descriptor along with bytes on a Unix stream socket (SCM_RIGHTS), and receiving
// them. A worker that survived a restart of ensembled hands its port's listening socket back to
// the new ensembled this way when it registers, so the port stays open whatever becomes of the
// worker. Both calls are non-blocking, for sockets an event loop owns: wait until the socket is
// writable or readable, then call.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "protocol/result.h"

namespace ensemble {

// Sends `bytes` with `fd` attached to them. The number of bytes sent (possibly fewer); errors:
// "would_block" (try again once writable), "send_failed".
Result<std::size_t> send_with_descriptor(int socket, std::string_view bytes, int fd);

struct Received {
    std::size_t bytes = 0;  // 0: the peer closed the connection
    // Descriptors that came with them, close-on-exec, owned by the caller. At most
    // kMaxDescriptors are kept; any beyond that (or cut short by the kernel) are closed.
    std::vector<int> descriptors;
};
inline constexpr std::size_t kMaxDescriptors = 4;

// Errors: "would_block" (try again once readable), "receive_failed".
Result<Received> receive_with_descriptors(int socket, std::span<char> buffer);

}  // namespace ensemble
