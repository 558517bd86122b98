// Browsers' cross-origin rules (CORS, in the Fetch standard) for the answers the worker and the
// front door make themselves. Their policy is llama-server's default: a page from any origin may
// read an answer. The port's API key, not the page's origin, is what guards it, and no cookie is
// involved, so credentials are not allowed. A model port hands a preflight to its engine, whose
// policy it is; the front door has no one engine and answers a preflight itself.
#pragma once

#include <string_view>

#include "os/beast_http.h"

namespace ensemble::cors {

// An OPTIONS with Origin and Access-Control-Request-Method and no body: a browser asking
// whether it may send a request. It carries no credentials, so it needs no API key.
bool is_preflight(const http::request<http::string_body>& request);

// The answer to a preflight: 204, any origin, `methods`, and the headers the page asked to send
// (`*` would not cover Authorization).
http::response<http::string_body> preflight_answer(const http::request<http::string_body>& request,
                                                   std::string_view methods, bool keep_alive);

// Lets the page read an answer to a request under /v1/ when the request came from one (it has
// an Origin): the worker's and the front door's own answers, refusals included, so that a page
// can tell a wrong key or a full queue from a blocked request.
void allow_origin(const http::request_header<>& request,
                  http::response<http::string_body>& response);

}  // namespace ensemble::cors
