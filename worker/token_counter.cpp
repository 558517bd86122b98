#include "worker/token_counter.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <functional>
#include <iterator>

namespace ensemble {

namespace {
constexpr std::size_t kPlainTail = 64 * 1024;
constexpr std::size_t kStreamTail = 4 * 1024;

// Finds the last place of a key that begins with a quote, stepping back by up to its length at a
// time (Boyer-Moore-Horspool over the reversed text): `usage` sits a few hundred bytes before the
// end of llama-server's answer, behind its timings, and a search byte by byte from the end
// (quotes are every few bytes) cost about 4,000 instructions per request (callgrind).
class LastKey {
  public:
    explicit LastKey(std::string_view key) : key_(key), reversed_(key.rbegin(), key.rend()) {}

    std::size_t size() const { return key_.size(); }
    // Where the last one lying wholly before `end` starts, or npos.
    std::size_t find_before(std::string_view text, std::size_t end) const {
        const auto from = std::make_reverse_iterator(text.begin() + std::min(end, text.size()));
        const auto match = reversed_(from, text.rend());
        if (match.first == text.rend()) return std::string_view::npos;
        return static_cast<std::size_t>(match.second.base() - text.begin());
    }

  private:
    std::string_view key_;
    std::boyer_moore_horspool_searcher<std::string_view::const_reverse_iterator> reversed_;
};

const LastKey kCompletionTokens(R"("completion_tokens")");
const LastKey kPromptTokens(R"("prompt_tokens")");

// A count in `usage`, found without parsing the answer: a quoted name followed by a colon is
// always a key (inside a string its quotes would be escaped, and after a string value only ',',
// '}' or ']' can follow). No other object of an OpenAI answer has these keys. The last one counts
// (a stream's usage event comes last).
std::uint64_t usage_count(const std::string& tail, const LastKey& key) {
    for (auto pos = key.find_before(tail, tail.size()); pos != std::string::npos;
         pos = key.find_before(tail, pos)) {
        auto at = tail.find_first_not_of(" \t\r\n", pos + key.size());
        if (at == std::string::npos || tail[at] != ':') continue;
        at = tail.find_first_not_of(" \t\r\n", at + 1);
        if (at == std::string::npos) return 0;
        std::uint64_t count = 0;
        const auto* end = tail.data() + tail.size();
        const auto parsed = std::from_chars(tail.data() + at, end, count);
        // A number with a fraction or exponent is not a count.
        if (parsed.ec != std::errc{} ||
            (parsed.ptr != end && (*parsed.ptr == '.' || *parsed.ptr == 'e' || *parsed.ptr == 'E')))
            return 0;
        return count;
    }
    return 0;
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
    const auto reported = usage_count(tail_, kCompletionTokens);
    return event_stream_ && reported == 0 ? events_ : reported;
}

std::uint64_t TokenCounter::prompt_tokens() const {
    return usage_count(tail_, kPromptTokens);
}

}  // namespace ensemble
