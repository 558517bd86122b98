#include "worker/cors.h"

namespace ensemble::cors {

bool is_preflight(const http::request<http::string_body>& request) {
    return request.method() == http::verb::options && request.body().empty() &&
           request.count(http::field::origin) > 0 &&
           request.count(http::field::access_control_request_method) > 0;
}

http::response<http::string_body> preflight_answer(const http::request<http::string_body>& request,
                                                   std::string_view methods, bool keep_alive) {
    http::response<http::string_body> answer{http::status::no_content, request.version()};
    answer.set(http::field::access_control_allow_origin, "*");
    answer.set(http::field::access_control_allow_methods,
               beast::string_view(methods.data(), methods.size()));
    if (const auto asked = request[http::field::access_control_request_headers]; !asked.empty())
        answer.set(http::field::access_control_allow_headers, asked);
    // Browsers keep a preflight's answer this long (they cap it: Chromium at 2 h).
    answer.set(http::field::access_control_max_age, "7200");
    answer.keep_alive(keep_alive);
    answer.prepare_payload();
    return answer;
}

void allow_origin(const http::request_header<>& request,
                  http::response<http::string_body>& response) {
    if (request.count(http::field::origin) > 0 && sv(request.target()).starts_with("/v1/"))
        response.set(http::field::access_control_allow_origin, "*");
}

}  // namespace ensemble::cors
