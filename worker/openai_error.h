// Error responses in OpenAI's format, so OpenAI clients surface them as proper API errors:
// {"error": {"message", "type", "param", "code"}}.
#pragma once

#include <string>

#include "os/beast_http.h"

namespace ensemble {

struct ApiError {
    http::status status;
    std::string type;  // invalid_request_error, authentication_error, server_error, ...
    std::string code;  // model_not_found, invalid_json, engine_loading, ...
    std::string message;
    int retry_after_seconds = 0;  // > 0 adds a Retry-After header

    std::string body() const;
    // The same error as one Server-Sent Event, to end a stream that cannot finish.
    std::string sse_event() const;
};

http::response<http::string_body> make_error_response(const ApiError& error, bool keep_alive);

http::response<http::string_body> make_json_response(http::status status, std::string body,
                                                     bool keep_alive);

}  // namespace ensemble
