#include "protocol/bearer_token.h"

#include <algorithm>
#include <cctype>

namespace ensemble::protocol {

bool constant_time_equal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    }
    return diff == 0;
}

bool bearer_matches(std::string_view authorization_header, std::string_view token) {
    // The scheme is case-insensitive (RFC 7235): "bearer" and "BEARER" are "Bearer".
    constexpr std::string_view kBearer = "bearer ";
    const auto scheme = authorization_header.substr(0, kBearer.size());
    const bool is_bearer =
        scheme.size() == kBearer.size() &&
        std::equal(scheme.begin(), scheme.end(), kBearer.begin(),
                   [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
    return is_bearer && constant_time_equal(authorization_header.substr(kBearer.size()), token);
}

}  // namespace ensemble::protocol
