// The limits of a public port's listener (a model port's worker, the front door) that the config
// sets for all of them (supervisor.port_limits): each is a key there and an option of
// ensemble-worker in both its modes, with the one range both accept. A limit the config leaves
// out is not passed, and the worker's own default holds (worker/http_listener.h).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ensemble::protocol {

enum class PortLimitUnit { bytes, count, seconds };

struct PortLimit {
    std::string_view key;     // under supervisor.port_limits
    std::string_view option;  // ensemble-worker's
    PortLimitUnit unit;
    std::uint64_t least;
    std::uint64_t most;
};

inline constexpr PortLimit kMaxBodyBytes{"max_body_bytes", "--max-body-bytes", PortLimitUnit::bytes,
                                         1024, std::uint64_t{1} << 34};
inline constexpr PortLimit kMaxConnections{"max_connections", "--max-connections",
                                           PortLimitUnit::count, 1, std::uint64_t{1} << 20};
inline constexpr PortLimit kIdleTimeout{"idle_timeout", "--idle-timeout", PortLimitUnit::seconds, 1,
                                        86400};
inline constexpr PortLimit kHeaderTimeout{"header_timeout", "--header-timeout",
                                          PortLimitUnit::seconds, 1, 3600};
inline constexpr PortLimit kSendTimeout{"send_timeout", "--send-timeout", PortLimitUnit::seconds, 1,
                                        86400};

inline constexpr std::array<const PortLimit*, 5> kPortLimits{
    &kMaxBodyBytes, &kMaxConnections, &kIdleTimeout, &kHeaderTimeout, &kSendTimeout};

// What a config sets, in the order of kPortLimits (bytes, a count, or whole seconds); nullopt:
// the worker's default.
using PortLimitValues = std::array<std::optional<std::uint64_t>, kPortLimits.size()>;

// The worker's options for the limits `values` sets.
inline void append_port_limit_options(std::vector<std::string>& argv,
                                      const PortLimitValues& values) {
    for (std::size_t i = 0; i < kPortLimits.size(); ++i) {
        if (!values[i]) continue;
        argv.emplace_back(kPortLimits[i]->option);
        argv.push_back(std::to_string(*values[i]));
    }
}

}  // namespace ensemble::protocol
