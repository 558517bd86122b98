// libFuzzer target: arbitrary bytes as a client's request body through the worker's request
// policy (model pinning re-serialises the body), and as an engine's answer through the token
// counter, plain and streamed.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "worker/request_policy.h"
#include "worker/token_counter.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const ensemble::ModelIdentity model{"tiny", {"small"}, "/models/tiny.gguf"};
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    (void)ensemble::pin_model(bytes, model);
    for (const bool event_stream : {false, true}) {
        ensemble::TokenCounter counter(event_stream);
        const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
        counter.feed(bytes.substr(0, split));
        counter.feed(bytes.substr(split));
        (void)counter.tokens();
    }
    return 0;
}
