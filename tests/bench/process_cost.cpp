#include "tests/bench/process_cost.h"

#include <filesystem>
#include <fstream>
#include <string>

namespace ensemble::bench {

ProcessCost process_cost(pid_t pid) {
    ProcessCost cost;
    std::error_code ec;
    const auto tasks = std::filesystem::path("/proc") / std::to_string(pid) / "task";
    for (const auto& task : std::filesystem::directory_iterator(tasks, ec)) {
        std::uint64_t cpu_ns = 0;
        if (std::ifstream(task.path() / "schedstat") >> cpu_ns) cost.cpu_ns += cpu_ns;
        std::ifstream status(task.path() / "status");
        for (std::string line; std::getline(status, line);) {
            const auto value = [&] { return std::stoull(line.substr(line.find(':') + 1)); };
            if (line.starts_with("voluntary_ctxt_switches:")) cost.voluntary_switches += value();
            if (line.starts_with("nonvoluntary_ctxt_switches:"))
                cost.involuntary_switches += value();
        }
    }
    return cost;
}

ProcessCost operator-(const ProcessCost& after, const ProcessCost& before) {
    return {after.cpu_ns - before.cpu_ns, after.voluntary_switches - before.voluntary_switches,
            after.involuntary_switches - before.involuntary_switches};
}

}  // namespace ensemble::bench
