#include "tests/bench/answer_timing.h"

#include <chrono>
#include <cstdio>
#include <optional>

#include "tests/support/http_client.h"

namespace ensemble::bench {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::duration<double, std::milli>;

void measure_answer(unsigned short port, const std::string& target, std::string_view token_marker,
                    const std::string& stream_body, const std::string& whole_body,
                    AnswerTimes& times) {
    auto request = testing::chat_request(stream_body, true);
    request.target = target;
    const auto start = Clock::now();
    std::optional<Clock::time_point> first;
    int seen = 0;
    auto r = testing::http_request(port, request, [&](std::string_view chunk) {
        for (auto at = chunk.find(token_marker); at != std::string_view::npos;
             at = chunk.find(token_marker, at + 1)) {
            if (!first) first = Clock::now();
            ++seen;
        }
        return true;
    });
    const auto end = Clock::now();
    if (r.status != 200 || !first || seen < 2) {
        ++times.failures;
        std::fprintf(stderr, "%s on port %u: status %d, %d tokens: %.200s\n", target.c_str(), port,
                     r.status, seen, r.body.c_str());
        return;
    }
    times.ttft_ms.push_back(Ms(*first - start).count());
    times.per_token_ms.push_back(Ms(end - *first).count() / (seen - 1));
    auto whole = testing::chat_request(whole_body);
    whole.target = target;
    const auto began = Clock::now();
    if (testing::http_request(port, whole).status != 200) {
        ++times.failures;
        return;
    }
    times.whole_ms.push_back(Ms(Clock::now() - began).count());
}

}  // namespace ensemble::bench
