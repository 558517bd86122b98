// Parsing JSON that came from outside — a request body, a socket message, a model file's header —
// with its nesting bounded. The parser itself does not recurse, but everything that walks the
// result does (dump, copy, compare): a body of 100,000 '[' parsed fine and then crashed the
// worker when it was serialised again. Nothing legitimate nests anywhere near the limit.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "protocol/result.h"

namespace ensemble {

inline constexpr int kMaxJsonDepth = 128;

// Whether `text` opens more than `max_depth` arrays or objects inside one another (strings
// skipped). Exact for valid JSON; for anything else, the parser rejects it regardless.
bool json_nesting_exceeds(std::string_view text, int max_depth = kMaxJsonDepth);

// Errors: "too_deep" ("... nested more than 128 levels deep") or "invalid_json"; the messages say
// what is wrong with the text, never what is in it. Callers add what to do.
Result<nlohmann::json> parse_bounded_json(std::string_view text, int max_depth = kMaxJsonDepth);

}  // namespace ensemble
