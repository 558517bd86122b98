#include "worker/openai_error.h"

#include <nlohmann/json.hpp>

namespace ensemble {

std::string ApiError::body() const {
    nlohmann::json j = {
        {"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code}}}};
    // A message may quote what a client sent (a path): bytes that are not UTF-8 become U+FFFD.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ApiError::sse_event() const {
    return "data: " + body() + "\n\n";
}

http::response<http::string_body> make_json_response(http::status status, std::string body,
                                                     bool keep_alive) {
    http::response<http::string_body> res{status, 11};
    res.set(http::field::server, "ensemble-worker");
    res.set(http::field::content_type, "application/json");
    res.body() = std::move(body);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

http::response<http::string_body> make_error_response(const ApiError& error, bool keep_alive) {
    auto res = make_json_response(error.status, error.body(), keep_alive);
    if (error.retry_after_seconds > 0) {
        res.set(http::field::retry_after, std::to_string(error.retry_after_seconds));
    }
    if (error.status == http::status::unauthorized)
        res.set(http::field::www_authenticate, "Bearer");
    return res;
}

}  // namespace ensemble
