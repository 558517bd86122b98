// Bearer tokens (RFC 6750) as both listeners check them: a worker's API key on /v1/* and the
// token of ensembled's status listener. Secrets are compared in time independent of where they
// first differ.
#pragma once

#include <string_view>

namespace ensemble::protocol {

bool constant_time_equal(std::string_view a, std::string_view b);

// Whether an Authorization header carries `token` as "Bearer <token>".
bool bearer_matches(std::string_view authorization_header, std::string_view token);

}  // namespace ensemble::protocol
