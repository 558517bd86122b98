#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "os/port_holder.h"

namespace ensemble {

namespace {

struct ListeningSocketEntry {
    std::string inode;
    unsigned short port = 0;
};

// Every listening TCP socket of this network namespace, from /proc/net/tcp and tcp6.
std::vector<ListeningSocketEntry> listening_sockets() {
    std::vector<ListeningSocketEntry> out;
    for (const auto* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
        std::ifstream in(table);
        std::string line;
        std::getline(in, line);  // the header
        while (std::getline(in, line)) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            std::istringstream fields(line);
            std::string sl, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
            fields >> sl >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
                timeout >> inode;
            constexpr auto kListen = "0A";
            const auto colon = local.rfind(':');
            if (state != kListen || colon == std::string::npos) continue;
            const auto port = std::strtoul(local.c_str() + colon + 1, nullptr, 16);
            out.push_back({inode, static_cast<unsigned short>(port)});
        }
    }
    return out;
}

// The socket inodes among `pid`'s open descriptors (none if we may not look).
std::set<std::string> socket_inodes_of(pid_t pid) {
    std::set<std::string> inodes;
    // Processes come and go while we look: every step reports into `ec`, none throws.
    std::error_code ec;
    const auto fds = std::filesystem::path("/proc") / std::to_string(pid) / "fd";
    for (std::filesystem::directory_iterator it(fds, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code unreadable;
        const auto target = std::filesystem::read_symlink(it->path(), unreadable).string();
        if (!unreadable && target.starts_with("socket:["))
            inodes.insert(target.substr(8, target.size() - 9));
    }
    return inodes;
}

std::string short_name(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    std::getline(in, name);
    return name.empty() ? "an unnamed process" : name;
}

}  // namespace

std::vector<PortHolder> port_holders(int port) {
    std::set<std::string> wanted;
    for (const auto& socket : listening_sockets()) {
        if (socket.port == port) wanted.insert(socket.inode);
    }
    std::vector<PortHolder> holders;
    if (wanted.empty()) return holders;
    std::error_code ec;
    for (std::filesystem::directory_iterator it("/proc", ec), end; !ec && it != end;
         it.increment(ec)) {
        const auto name = it->path().filename().string();
        const auto digit = [](char c) { return c >= '0' && c <= '9'; };
        if (name.empty() || !std::all_of(name.begin(), name.end(), digit)) continue;
        const auto pid = static_cast<pid_t>(std::stol(name));
        const auto inodes = socket_inodes_of(pid);
        if (std::any_of(inodes.begin(), inodes.end(),
                        [&](const std::string& inode) { return wanted.contains(inode); }))
            holders.push_back({pid, short_name(pid)});
    }
    return holders;
}

std::vector<unsigned short> tcp_ports_listened_on_by(pid_t pid) {
    const auto inodes = socket_inodes_of(pid);
    std::set<unsigned short> ports;
    for (const auto& socket : listening_sockets()) {
        if (inodes.contains(socket.inode)) ports.insert(socket.port);
    }
    return {ports.begin(), ports.end()};
}

}  // namespace ensemble
