#include <arpa/inet.h>
#include <libproc.h>
#include <sys/param.h>
#include <sys/proc_info.h>

#include <cstdint>

#include <set>
#include <vector>

#include "os/port_holder.h"

namespace ensemble {

namespace {

// The TCP ports `pid` listens on, from its socket descriptors (none if we may not look).
std::set<unsigned short> listening_ports(pid_t pid) {
    std::set<unsigned short> ports;
    const int bytes = ::proc_pidinfo(pid, PROC_PIDLISTFDS, 0, nullptr, 0);
    if (bytes <= 0) return ports;
    std::vector<proc_fdinfo> fds(static_cast<std::size_t>(bytes) / sizeof(proc_fdinfo));
    const int filled = ::proc_pidinfo(pid, PROC_PIDLISTFDS, 0, fds.data(),
                                      static_cast<int>(fds.size() * sizeof(proc_fdinfo)));
    if (filled <= 0) return ports;
    fds.resize(static_cast<std::size_t>(filled) / sizeof(proc_fdinfo));
    for (const auto& fd : fds) {
        if (fd.proc_fdtype != PROX_FDTYPE_SOCKET) continue;
        socket_fdinfo info{};
        if (::proc_pidfdinfo(pid, fd.proc_fd, PROC_PIDFDSOCKETINFO, &info, sizeof info) !=
            static_cast<int>(sizeof info))
            continue;
        if (info.psi.soi_kind != SOCKINFO_TCP) continue;
        const auto& tcp = info.psi.soi_proto.pri_tcp;
        if (tcp.tcpsi_state != TSI_S_LISTEN) continue;
        ports.insert(ntohs(static_cast<std::uint16_t>(tcp.tcpsi_ini.insi_lport)));
    }
    return ports;
}

}  // namespace

std::vector<PortHolder> port_holders(int port) {
    std::vector<PortHolder> holders;
    const int bytes = ::proc_listpids(PROC_ALL_PIDS, 0, nullptr, 0);
    if (bytes <= 0) return holders;
    std::vector<pid_t> pids(static_cast<std::size_t>(bytes) / sizeof(pid_t) + 16);
    const int filled = ::proc_listpids(PROC_ALL_PIDS, 0, pids.data(),
                                       static_cast<int>(pids.size() * sizeof(pid_t)));
    if (filled <= 0) return holders;
    pids.resize(static_cast<std::size_t>(filled) / sizeof(pid_t));
    for (const pid_t pid : pids) {
        if (pid <= 0 || !listening_ports(pid).contains(static_cast<unsigned short>(port))) continue;
        char name[2 * MAXCOMLEN + 1] = {};
        ::proc_name(pid, name, sizeof name);
        holders.push_back({pid, name[0] ? name : "an unnamed process"});
    }
    return holders;
}

std::vector<unsigned short> tcp_ports_listened_on_by(pid_t pid) {
    const auto ports = listening_ports(pid);
    return {ports.begin(), ports.end()};
}

}  // namespace ensemble
