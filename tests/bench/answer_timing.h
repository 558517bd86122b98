// The timing of one answer, streamed and whole: time to first token, time per token after it,
// and a whole (non-streamed) answer's latency. Shared by the benchmarks that compare two ways to
// the same engine (Ollama's API against OpenAI's, the front door against the model port).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ensemble::bench {

struct AnswerTimes {
    std::vector<double> ttft_ms, per_token_ms, whole_ms;
    int failures = 0;
};

// POSTs `stream_body` to `target` on `port`, counting `token_marker` (one per token event) as
// the stream arrives, then `whole_body`; adds the times to `times` (or counts a failure).
void measure_answer(unsigned short port, const std::string& target, std::string_view token_marker,
                    const std::string& stream_body, const std::string& whole_body,
                    AnswerTimes& times);

}  // namespace ensemble::bench
