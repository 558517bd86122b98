#include "worker/token_counter.h"

#include <algorithm>
#include <array>
#include <charconv>

namespace ensemble {

namespace {
constexpr std::size_t kPlainTail = 64 * 1024;
constexpr std::size_t kStreamTail = 4 * 1024;

// The last `key` (which begins with a quote) starting before `before`: std::string::rfind compares
// at every position, and this runs at the end of every answer; quotes are few.
std::size_t last_key(std::string_view text, std::string_view key, std::size_t before) {
    for (auto end = std::min(before, text.size()); end > 0;) {
        const auto pos = text.substr(0, end).rfind(key.front());
        if (pos == std::string_view::npos || text.substr(pos).starts_with(key)) return pos;
        end = pos;
    }
    return std::string_view::npos;
}
}  // namespace

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
    }
    // `usage` comes at the end of an answer (a stream's in its last event, when the client asked
    // for it): keep the last bytes, however long it is, trimming now and then rather than per
    // chunk.
    const auto keep = event_stream_ ? kStreamTail : kPlainTail;
    tail_.append(bytes);
    if (tail_.size() > 2 * keep) tail_.erase(0, tail_.size() - keep);
}

std::uint64_t TokenCounter::tokens() const {
    // A stream's usage event (stream_options.include_usage) is the engine's own count: an event
    // whose token decodes to no text yet (part of a character) carries empty content.
    const auto reported = usage_count("\"completion_tokens\"");
    return event_stream_ && reported == 0 ? events_ : reported;
}

std::uint64_t TokenCounter::prompt_tokens() const {
    return usage_count("\"prompt_tokens\"");
}

// A count in `usage`, found without parsing the answer: a quoted name followed by a colon is
// always a key (inside a string its quotes would be escaped, and after a string value only ',',
// '}' or ']' can follow). No other object of an OpenAI answer has these keys. The last one counts
// (a stream's usage event comes last).
std::uint64_t TokenCounter::usage_count(std::string_view key) const {
    for (auto pos = last_key(tail_, key, tail_.size()); pos != std::string::npos;
         pos = last_key(tail_, key, pos)) {
        auto at = tail_.find_first_not_of(" \t\r\n", pos + key.size());
        if (at == std::string::npos || tail_[at] != ':') continue;
        at = tail_.find_first_not_of(" \t\r\n", at + 1);
        if (at == std::string::npos) return 0;
        std::uint64_t count = 0;
        const auto* end = tail_.data() + tail_.size();
        const auto parsed = std::from_chars(tail_.data() + at, end, count);
        // A number with a fraction or exponent is not a count.
        if (parsed.ec != std::errc{} ||
            (parsed.ptr != end && (*parsed.ptr == '.' || *parsed.ptr == 'e' || *parsed.ptr == 'E')))
            return 0;
        return count;
    }
    return 0;
}

}  // namespace ensemble
