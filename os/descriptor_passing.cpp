#include "os/descriptor_passing.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ensemble {

namespace {

Error failure(const char* code, const char* what) {
    return Error{code, std::string(what) + ": " + std::strerror(errno)};
}

bool would_block() {
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

}  // namespace

Result<std::size_t> send_with_descriptor(int socket, std::string_view bytes, int fd) {
    iovec io{const_cast<char*>(bytes.data()), bytes.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    auto* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
#ifdef MSG_NOSIGNAL
    const int flags = MSG_NOSIGNAL;
#else
    const int flags = 0;  // macOS: SIGPIPE is ignored by the worker
#endif
    const auto sent = ::sendmsg(socket, &message, flags);
    if (sent < 0) {
        if (would_block()) return Error{"would_block", "the socket is full"};
        return failure("send_failed", "sendmsg with a descriptor");
    }
    return static_cast<std::size_t>(sent);
}

Result<Received> receive_with_descriptors(int socket, std::span<char> buffer) {
    iovec io{buffer.data(), buffer.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptors)] = {};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
#ifdef MSG_CMSG_CLOEXEC
    const int flags = MSG_CMSG_CLOEXEC;
#else
    const int flags = 0;  // macOS: marked close-on-exec below (one event loop thread spawns)
#endif
    const auto got = ::recvmsg(socket, &message, flags);
    if (got < 0) {
        if (would_block()) return Error{"would_block", "nothing to read"};
        return failure("receive_failed", "recvmsg");
    }
    Received received;
    received.bytes = static_cast<std::size_t>(got);
    for (auto* header = CMSG_FIRSTHDR(&message); header != nullptr;
         header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        // Never more than the buffer holds: a truncated message (MSG_CTRUNC) may keep its
        // sender's cmsg_len (macOS), which would read past `control` and close whatever
        // descriptor numbers lay there.
        const auto* data = CMSG_DATA(header);
        const auto held = static_cast<std::size_t>(control + message.msg_controllen -
                                                   reinterpret_cast<const char*>(data));
        const auto count =
            std::min<std::size_t>((header->cmsg_len - CMSG_LEN(0)), held) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd = -1;
            std::memcpy(&fd, data + i * sizeof(int), sizeof fd);
            ::fcntl(fd, F_SETFD, FD_CLOEXEC);
            if (received.descriptors.size() < kMaxDescriptors) {
                received.descriptors.push_back(fd);
            } else {
                ::close(fd);
            }
        }
    }
    // MSG_CTRUNC: descriptors beyond the control buffer were closed by the kernel (Linux) or
    // are lost; what arrived is what there is.
    return received;
}

}  // namespace ensemble
