// An answer rewritten as it passes from the engine to the client: how another API (Ollama's) is
// served on top of the engine's OpenAI API without buffering a stream.
#pragma once

#include <string>
#include <string_view>

#include "os/beast_http.h"
#include "worker/openai_error.h"

namespace ensemble {

class AnswerFilter {
  public:
    virtual ~AnswerFilter() = default;
    // The engine's status and headers, before anything is sent: the filter sets its own
    // content type (the body is then sent chunked, its length unknown).
    virtual void begin(http::response_header<>& header, bool event_stream) = 0;
    // The client's bytes for the engine's next ones (possibly none yet).
    virtual std::string feed(std::string_view bytes) = 0;
    // What is left to send once the engine's answer has ended.
    virtual std::string finish() = 0;
    // The last bytes of an answer the engine cut short.
    virtual std::string cut(const ApiError& error) = 0;
    // The whole answer when the engine could not be asked (unavailable, closed early, silent),
    // in the filtered API's shape.
    virtual http::response<http::string_body> error_response(const ApiError& error,
                                                             bool keep_alive) const = 0;
};

}  // namespace ensemble
