#include "worker/token_counter.h"

#include <nlohmann/json.hpp>

#include "protocol/bounded_json.h"

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
    const auto parsed = parse_bounded_json(body_);
    if (!parsed || !parsed->is_object()) return 0;
    const auto& json = *parsed;
    const auto usage = json.find("usage");
    if (usage == json.end() || !usage->is_object()) return 0;
    const auto completion = usage->find("completion_tokens");
    return completion != usage->end() && completion->is_number_unsigned()
               ? completion->get<std::uint64_t>()
               : 0;
}

}  // namespace ensemble
