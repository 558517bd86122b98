// A validating single pass over JSON text that finds where a top-level member's values are,
// without building the document. The worker pins `model` in every request body; parsing and
// re-serialising the whole body for that cost ~10 ms per MB (issue 14), splicing costs a copy.
// Accepts exactly what nlohmann::json::parse accepts (RFC 8259, well-formed UTF-8, paired
// surrogate escapes, finite numbers) but for two things, both refused here: a NUL byte (nlohmann
// stops there and ignores what follows) and a leading UTF-8 byte order mark (nlohmann skips it).
// A body we pass on is one the engine reads as we did.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "protocol/bounded_json.h"
#include "protocol/result.h"

namespace ensemble {

struct MemberValue {
    std::size_t key = 0;  // which of the keys asked for
    std::size_t begin = 0;
    std::size_t end = 0;  // one past the value's last byte
};

struct TopLevelScan {
    bool is_object = false;
    std::size_t object_open = 0;  // offset of the top-level object's '{'
    std::size_t members = 0;      // of the top-level object
    // The value of every top-level member whose name, unescaped, is one of the keys, in the
    // order of the text (JSON allows duplicates; parsers keep the last, so each one matters).
    std::vector<MemberValue> values;
};

// Errors as parse_bounded_json's: "too_deep" or "invalid_json".
Result<TopLevelScan> scan_top_level_members(std::string_view text,
                                            std::span<const std::string_view> keys,
                                            int max_depth = kMaxJsonDepth);
Result<TopLevelScan> scan_top_level_member(std::string_view text, std::string_view key,
                                           int max_depth = kMaxJsonDepth);

}  // namespace ensemble
