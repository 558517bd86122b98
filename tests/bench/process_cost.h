// What a process spends: CPU time and context switches, summed over its threads, read from
// /proc. A proxy's cost per request is the difference of two readings over a load run divided by
// the requests served; unlike latency, it barely moves with the engine's own noise.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace ensemble::bench {

struct ProcessCost {
    std::uint64_t cpu_ns = 0;                // on CPU (schedstat)
    std::uint64_t voluntary_switches = 0;    // blocked: waited for something
    std::uint64_t involuntary_switches = 0;  // preempted while it still had work
};

ProcessCost process_cost(pid_t pid);  // zeros when the process cannot be read
ProcessCost operator-(const ProcessCost& after, const ProcessCost& before);

}  // namespace ensemble::bench
