#include "protocol/bearer_token.h"

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
    constexpr std::string_view kBearer = "Bearer ";
    return authorization_header.substr(0, kBearer.size()) == kBearer &&
           constant_time_equal(authorization_header.substr(kBearer.size()), token);
}

}  // namespace ensemble::protocol
