// llama-server on its own, the reference a supervised path is compared with: its time from
// spawn to ready, or to its first answer.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace ensemble::bench {

using Clock = std::chrono::steady_clock;

// Polls a one-token chat request until it is answered 200; the time that took since `since`.
double until_answered(unsigned short port, Clock::time_point since);

// llama-server alone (one slot, 2048 context, and `args`), from spawn to /health 200 (polled
// every 2 ms), or to its first answered chat request; its log goes to `log_file`.
double engine_alone_ms(const std::string& model, bool until_chat,
                       const std::filesystem::path& log_file,
                       const std::vector<std::string>& args = {"--threads", "1"});

// A table of p50, min and max of `alone` (llama-server on its own, described as `alone_name`)
// and `measured` (`measured_name`), with the difference of their medians.
void print_against_engine(const std::string& alone_name, const std::vector<double>& alone,
                          const std::string& measured_name, const std::vector<double>& measured);

}  // namespace ensemble::bench
