#include "protocol/bounded_json.h"

#include <string>

namespace ensemble {

bool json_nesting_exceeds(std::string_view text, int max_depth) {
    int depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        switch (c) {
            case '"':
                in_string = true;
                break;
            case '[':
            case '{':
                if (++depth > max_depth) return true;
                break;
            case ']':
            case '}':
                --depth;
                break;
            default:
                break;
        }
    }
    return false;
}

Result<nlohmann::json> parse_bounded_json(std::string_view text, int max_depth) {
    if (json_nesting_exceeds(text, max_depth)) {
        return Error{"too_deep", "it nests arrays and objects more than " +
                                     std::to_string(max_depth) + " levels deep"};
    }
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return Error{"invalid_json", "it is not valid JSON"};
    return json;
}

}  // namespace ensemble
