// Who listens on a TCP port. A port ensembled cannot bind is named with its holder ("held by
// nginx (pid 812)") when this user may see it; and tests check which ports a process listens on.
// Linux reads /proc/net/tcp{,6} and /proc/PID/fd; macOS asks libproc (PROC_PIDFDSOCKETINFO).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ensemble {

struct PortHolder {
    pid_t pid = 0;
    std::string name;  // the program's short name (Linux: comm; macOS: proc_name)
};

// The processes listening on TCP `port` (any address, IPv4 or IPv6) that this user may inspect:
// empty when none is visible (another user's process, seen by a user who is not root). Reads
// every process's descriptors: for messages to a person, not for routine checks.
std::vector<PortHolder> port_holders(int port);

// "held by nginx (pid 812)" or "held by nginx (pids 812, 813)", or "" when no holder is visible.
std::string describe_port_holders(int port);

// The holder when visible, else how to find it: "held by nginx (pid 812)", or "see 'ss -ltnp
// sport = :8100' or 'lsof -iTCP:8100 -sTCP:LISTEN'" (another user's process, seen by a user).
std::string port_holder_hint(int port);

// The TCP ports `pid` listens on (sorted, without repeats; empty if it cannot be inspected).
std::vector<unsigned short> tcp_ports_listened_on_by(pid_t pid);

}  // namespace ensemble
