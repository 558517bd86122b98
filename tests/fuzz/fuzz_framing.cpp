// libFuzzer target: arbitrary bytes through the NDJSON frame decoder and both message parsers.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/framing.h"
#include "protocol/messages.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    ensemble::protocol::FrameDecoder decoder(4096);
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    // Feed in two pieces, split where the first byte says, to exercise partial frames.
    const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
    decoder.feed(bytes.substr(0, split));
    decoder.feed(bytes.substr(split));
    while (auto frame = decoder.next()) {
        if (!*frame) continue;
        (void)ensemble::protocol::parse_worker_message(frame->value());
        (void)ensemble::protocol::parse_control_request(frame->value());
    }
    return 0;
}
