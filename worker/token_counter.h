// Counts the tokens an engine generates in the responses passing through the proxy, without
// holding a stream back: in an event stream, one per event that carries content (split events
// across chunk boundaries included); in a plain answer, its usage.completion_tokens.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace ensemble {

class TokenCounter {
  public:
    explicit TokenCounter(bool event_stream) : event_stream_(event_stream) {}

    void feed(std::string_view bytes);
    std::uint64_t tokens() const;  // complete after the last feed
    // A stream's events with content so far (cheap: for the time to first token).
    std::uint64_t content_events() const { return events_; }
    // usage.prompt_tokens of the answer (of a stream, when it carried usage), else 0.
    std::uint64_t prompt_tokens() const;

  private:
    struct NeedleScan {
        std::string_view needle;
        std::string carry;  // the last needle.size() bytes seen
    };
    void scan(NeedleScan& s, std::string_view bytes);

    // Chat streams carry "content", legacy completion streams "text"; an empty string is no token.
    static constexpr std::string_view kContentNeedle = R"("content":")";
    static constexpr std::string_view kTextNeedle = R"("text":")";
    static constexpr std::size_t kLongestNeedle = kContentNeedle.size();
    static_assert(kTextNeedle.size() <= kLongestNeedle);

    bool event_stream_;
    std::uint64_t events_ = 0;
    std::array<NeedleScan, 2> scans_{{{kContentNeedle, {}}, {kTextNeedle, {}}}};
    std::string tail_;  // the answer's last bytes (64 KiB of a plain one, 4 KiB of a stream)
};

}  // namespace ensemble
