#include "worker/token_counter.h"

#include <algorithm>
#include <array>
#include <charconv>

namespace ensemble {

namespace {
constexpr std::size_t kPlainTail = 64 * 1024;
}

// A needle counts once the character after it is known (and is not the closing quote of an empty
// string). The carry is the last needle-length bytes: a needle counted before cannot start in it
// (its next character was inside the old piece), and one not yet counted always does. No copy of
// the piece is made (this runs for every chunk of every stream): needles starting in the carry
// are found in the carry and the piece's first bytes, the others in the piece itself.
void TokenCounter::scan(NeedleScan& s, std::string_view bytes) {
    const auto n = s.needle.size();
    const auto c = s.carry.size();  // <= n
    std::array<char, 4 * kLongestNeedle> head_bytes{};
    static_assert(sizeof head_bytes >= 2 * kLongestNeedle + 1);
    const auto taken = std::min(bytes.size(), n + 1);
    std::copy(s.carry.begin(), s.carry.end(), head_bytes.begin());
    std::copy_n(bytes.begin(), taken, head_bytes.begin() + static_cast<std::ptrdiff_t>(c));
    const std::string_view head(head_bytes.data(), c + taken);
    const auto count = [&](std::string_view text, std::size_t starts_before) {
        for (auto pos = text.find(s.needle); pos != std::string_view::npos && pos < starts_before;
             pos = text.find(s.needle, pos + 1)) {
            if (pos + n < text.size() && text[pos + n] != '"') ++events_;
        }
    };
    count(head, c);
    count(bytes, bytes.size());
    // The new carry: the last n bytes of carry + piece (all of which are in head when the
    // piece is shorter than n).
    const auto tail = bytes.size() >= n ? bytes.substr(bytes.size() - n)
                                        : head.substr(head.size() > n ? head.size() - n : 0);
    s.carry.assign(tail);
}

void TokenCounter::feed(std::string_view bytes) {
    if (event_stream_) {
        for (auto& s : scans_)
            scan(s, bytes);
    } else {
        // `usage` comes at the end of an answer: keep the last bytes, however long it is.
        body_.append(bytes);
        if (body_.size() > kPlainTail) body_.erase(0, body_.size() - kPlainTail);
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
