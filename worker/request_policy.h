// What the worker decides about a request before it reaches the engine, as pure functions:
// is the caller allowed (API key), is the body valid JSON, does it name this worker's model,
// and the body rewritten to the engine's own model id ("pin the model": an engine such as
// mlx_lm.server would otherwise load whatever path a request names).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/json_scan.h"
#include "protocol/result.h"
#include "worker/openai_error.h"

namespace ensemble {

struct ModelIdentity {
    std::string handle;
    std::vector<std::string> aliases;
    std::string engine_model_id;
    // Any requested name is served by this model (clients such as Cline send their own);
    // still pinned to the engine's id, never forwarded.
    bool accept_any_model = false;

    bool answers_to(std::string_view name) const;
};

// Ok when the request may proceed; else "invalid_api_key". An empty `api_key` means no key is
// required.
Status check_api_key(std::string_view authorization_header, std::string_view api_key);

// The body to forward; else "invalid_json", "invalid_model", "model_not_found", or
// "unsupported_parameter" (`adapters`, `draft_model`: an engine would load what they name).
// Bodies that are not JSON objects are refused: every OpenAI endpoint takes one. A body that
// already names the engine's id is returned as it came (no copy: it may be megabytes). `plain`:
// the body's blocks noted as it arrived, if it is the body as it arrived (json_scan.h).
Result<std::string> pin_model(std::string body, const ModelIdentity& model,
                              const PlainBlocks* plain = nullptr);

// How a refusal of the policy above is answered: its HTTP status and OpenAI error type.
ApiError api_error(const Error& refusal);

// GET /v1/models: this worker's handle (and aliases) as OpenAI model objects.
std::string models_list_body(const ModelIdentity& model, long created_unix_seconds);

}  // namespace ensemble
