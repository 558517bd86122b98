#include "os/port_holder.h"

#include <algorithm>
#include <map>

namespace ensemble {

std::string describe_port_holders(int port) {
    // Several processes share one listening socket after a fork (nginx's master and workers).
    std::map<std::string, std::vector<pid_t>> by_name;
    for (const auto& holder : port_holders(port))
        by_name[holder.name].push_back(holder.pid);
    std::string out;
    for (auto& [name, pids] : by_name) {
        std::sort(pids.begin(), pids.end());
        out += out.empty() ? "held by " : ", ";
        out += name + (pids.size() == 1 ? " (pid " : " (pids ");
        for (std::size_t i = 0; i < pids.size(); ++i)
            out += (i ? ", " : "") + std::to_string(pids[i]);
        out += ")";
    }
    return out;
}

std::string port_holder_hint(int port) {
    auto holders = describe_port_holders(port);
    if (!holders.empty()) return holders;
    const auto p = std::to_string(port);
    return "see 'ss -ltnp sport = :" + p + "' or 'lsof -iTCP:" + p + " -sTCP:LISTEN'";
}

}  // namespace ensemble
