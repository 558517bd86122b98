// Errors that mean this process (or this machine) ran out of its own resources — descriptors,
// memory, buffers, processes, local ports — rather than anything another process did. Such a
// failure is never blamed on the worker or engine that was being probed or started.
#pragma once

#include <cerrno>

namespace ensemble {

inline bool is_own_resource_shortage(int error) {
    return error == EMFILE || error == ENFILE || error == ENOMEM || error == ENOBUFS ||
           error == EAGAIN || error == EADDRNOTAVAIL;
}

}  // namespace ensemble
