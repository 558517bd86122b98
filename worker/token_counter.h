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
    std::string body_;  // a plain answer's last 64 KiB
};

}  // namespace ensemble
