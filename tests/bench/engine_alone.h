// llama-server on its own, the reference a supervised path is compared with: its time from
// spawn to ready, or to its first answer.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace ensemble::bench {

using Clock = std::chrono::steady_clock;

// The one-token chat request a first answer is timed with ("hi": 56 prompt tokens with the
// test models' template), for `model` when it is not empty. A cold request through our path
// must be this one too: every prompt token costs ~2 ms to evaluate on the bench model.
std::string first_answer_body(const std::string& model, bool stream);

// Polls first_answer_body until it is answered 200; the time that took since `since`.
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
