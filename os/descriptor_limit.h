// The open-descriptor limit. Services start with a low soft limit (1024 under systemd, 256 on
// macOS) and a far higher hard one; a supervisor with dozens of workers, or a worker with
// thousands of clients, raises its own soft limit to what it is allowed.
#pragma once

#include <cstdint>

namespace ensemble {

// Raises the soft RLIMIT_NOFILE as far as the hard limit (and, on macOS, OPEN_MAX) allows;
// returns the soft limit in force afterwards.
std::uint64_t raise_descriptor_limit();

// The soft limit in force now.
std::uint64_t descriptor_limit();

}  // namespace ensemble
