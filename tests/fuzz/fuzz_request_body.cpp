// libFuzzer target: arbitrary bytes as a client's request body through the worker's request
// policy (model pinning splices the body after one validating scan, which must accept exactly
// what nlohmann::json accepts and pin every `model`, and give the same answer when it steps over
// blocks noted as plain while the body arrived), and as an engine's answer through the token
// counter, plain and streamed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "protocol/bounded_json.h"

#include "worker/request_policy.h"
#include "worker/token_counter.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const ensemble::ModelIdentity model{"tiny", {"small"}, "/models/tiny.gguf"};
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    const auto pinned = ensemble::pin_model(std::string(bytes), model);
    ensemble::PlainBlocks plain;  // noted in parts, as a body arrives
    for (std::size_t noted = 0, step = 1; noted < size; step = step * 3 + 1) {
        noted = std::min(size, noted + step);
        plain.extend(bytes.substr(0, noted));
    }
    const auto pinned_over_plain = ensemble::pin_model(std::string(bytes), model, &plain);
    if (static_cast<bool>(pinned) != static_cast<bool>(pinned_over_plain)) __builtin_trap();
    if (pinned ? *pinned != *pinned_over_plain
               : pinned.error().code != pinned_over_plain.error().code)
        __builtin_trap();
    // nlohmann takes a NUL byte as the end of its input (and ignores what follows); the scan
    // refuses it, as RFC 8259 does: valid JSON never holds a raw NUL.
    const auto parsed = bytes.find('\0') == std::string_view::npos
                            ? nlohmann::json::parse(bytes, nullptr, false)
                            : nlohmann::json(nlohmann::json::value_t::discarded);
    const bool too_deep = ensemble::json_nesting_exceeds(bytes);
    if (!too_deep && !parsed.is_discarded() && parsed.is_object()) {
        const auto& claimed = parsed.contains("model") ? parsed["model"] : nlohmann::json("tiny");
        const bool ours = claimed == "tiny" || claimed == "small";
        // A refusal here is only right if some duplicate `model` names another model.
        if (pinned) {
            if (parsed.contains("adapters") || parsed.contains("draft_model")) __builtin_trap();
            auto expected = parsed;
            expected["model"] = model.engine_model_id;
            if (nlohmann::json::parse(*pinned) != expected) __builtin_trap();
        } else if (ours && pinned.error().code == "invalid_json") {
            __builtin_trap();  // nlohmann reads it, the scan refused it
        }
    } else if (pinned) {
        __builtin_trap();  // nlohmann refuses it (or it is not an object), the scan passed it
    }
    for (const bool event_stream : {false, true}) {
        ensemble::TokenCounter counter(event_stream);
        const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
        counter.feed(bytes.substr(0, split));
        counter.feed(bytes.substr(split));
        // However the answer is cut into pieces, the count is the same.
        ensemble::TokenCounter whole(event_stream);
        whole.feed(bytes);
        if (counter.tokens() != whole.tokens()) __builtin_trap();
    }
    return 0;
}
