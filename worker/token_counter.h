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

    bool event_stream_;
    std::uint64_t events_ = 0;
    // Chat streams carry "content", legacy completion streams "text"; an empty string is no token.
    std::array<NeedleScan, 2> scans_{{{R"("content":")", {}}, {R"("text":")", {}}}};
    std::string body_;  // a plain answer, up to 1 MiB
};

}  // namespace ensemble
