#include "worker/token_counter.h"

#include <charconv>

namespace ensemble {

namespace {
constexpr std::size_t kMaxPlainBody = 1 << 20;
}

// A needle counts once the character after it is known (and is not the closing quote of an empty
// string). The carry is the last needle-length bytes: a needle counted before cannot start in it
// (its next character was inside the old piece), and one not yet counted always does.
void TokenCounter::scan(NeedleScan& s, std::string_view bytes) {
    const std::string window = s.carry + std::string(bytes);
    const auto n = s.needle.size();
    for (auto pos = window.find(s.needle); pos != std::string::npos;
         pos = window.find(s.needle, pos + 1)) {
        if (pos + n < window.size() && window[pos + n] != '"') ++events_;
    }
    s.carry = window.size() > n ? window.substr(window.size() - n) : window;
}

void TokenCounter::feed(std::string_view bytes) {
    if (event_stream_) {
        for (auto& s : scans_)
            scan(s, bytes);
    } else if (body_.size() + bytes.size() <= kMaxPlainBody) {
        body_.append(bytes);
    }
}

std::uint64_t TokenCounter::tokens() const {
    if (event_stream_) return events_;
    // usage.completion_tokens, found without parsing the answer: a quoted name followed by a
    // colon is always a key (inside a string its quotes would be escaped, and after a string
    // value only ',', '}' or ']' can follow). No other object of an OpenAI answer has this key.
    constexpr std::string_view kKey = "\"completion_tokens\"";
    for (auto pos = body_.find(kKey); pos != std::string::npos; pos = body_.find(kKey, pos + 1)) {
        auto at = body_.find_first_not_of(" \t\r\n", pos + kKey.size());
        if (at == std::string::npos || body_[at] != ':') continue;
        at = body_.find_first_not_of(" \t\r\n", at + 1);
        if (at == std::string::npos) return 0;
        std::uint64_t count = 0;
        const auto* end = body_.data() + body_.size();
        const auto parsed = std::from_chars(body_.data() + at, end, count);
        // A number with a fraction or exponent is not a count.
        if (parsed.ec != std::errc{} ||
            (parsed.ptr != end && (*parsed.ptr == '.' || *parsed.ptr == 'e' || *parsed.ptr == 'E')))
            return 0;
        return count;
    }
    return 0;
}

}  // namespace ensemble
