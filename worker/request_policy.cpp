#include "worker/request_policy.h"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>

#include "protocol/bearer_token.h"
#include "protocol/json_scan.h"

namespace ensemble {

bool ModelIdentity::answers_to(std::string_view name) const {
    return accept_any_model || name == handle ||
           std::find(aliases.begin(), aliases.end(), name) != aliases.end();
}

Status check_api_key(std::string_view authorization_header, std::string_view api_key) {
    if (api_key.empty()) return Ok{};
    if (protocol::bearer_matches(authorization_header, api_key)) return Ok{};
    const bool missing = authorization_header.empty();
    return Error{"invalid_api_key",
                 missing ? "this port requires an API key: send 'Authorization: Bearer <key>'"
                         : "the API key is not valid for this port"};
}

namespace {

// The engine's model id as a JSON string, quoted once rather than for every request (nlohmann's
// serialiser also reads the locale each time it is made).
const std::string& quoted(const std::string& id) {
    thread_local std::string last_id;
    thread_local std::string last_quoted;
    if (last_quoted.empty() || id != last_id) {
        last_quoted = nlohmann::json(id).dump();
        last_id = id;
    }
    return last_quoted;
}

}  // namespace

Result<std::string> pin_model(std::string body, const ModelIdentity& model,
                              const PlainBlocks* plain) {
    // One validating pass finds the `model` members; the body is then spliced, not re-serialised:
    // its other bytes reach the engine exactly as the client sent them. Members that make an
    // engine load other weights (mlx_lm.server loads, or downloads, the LoRA adapters and the
    // draft model a request names) are refused like another model.
    constexpr std::size_t kModel = 0;
    static constexpr std::array<std::string_view, 3> kKeys{"model", "adapters", "draft_model"};
    const std::string_view text(body);
    auto scanned = scan_top_level_members(text, kKeys, kMaxJsonDepth, plain);
    if (!scanned && scanned.error().code == "too_deep")
        return Error{"invalid_json",
                     "the request body is refused: " + scanned.error().message + "; flatten it"};
    if (!scanned) {
        return Error{"invalid_json",
                     "the request body is not valid JSON; send a JSON object such as "
                     "{\"model\": \"" +
                         model.handle + "\", \"messages\": [...]}"};
    }
    const auto& scan = *scanned;
    if (!scan.is_object) return Error{"invalid_json", "the request body must be a JSON object"};
    std::vector<MemberValue> models;
    for (const auto& member : scan.values) {
        if (member.key != kModel) {
            return Error{"unsupported_parameter",
                         "'" + std::string(kKeys[member.key]) +
                             "' is not accepted: this port serves only '" + model.handle +
                             "', and the engine would load what it names; remove it"};
        }
        models.push_back(member);
        const auto value = text.substr(member.begin, member.end - member.begin);
        if (value.front() != '"') return Error{"invalid_model", "'model' must be a string"};
        // Escapes are rare; a name without one is its own bytes between the quotes.
        const auto name = value.find('\\') == std::string_view::npos
                              ? std::string(value.substr(1, value.size() - 2))
                              : nlohmann::json::parse(value).get<std::string>();
        if (!model.answers_to(name)) {
            return Error{"model_not_found", "the model '" + name +
                                                "' is not served on this port; it serves '" +
                                                model.handle + "' (see GET /v1/models)"};
        }
    }
    const auto& engine_id = quoted(model.engine_model_id);
    const auto names_engine_id = [&](const MemberValue& member) {
        return text.substr(member.begin, member.end - member.begin) == engine_id;
    };
    if (!models.empty() && std::all_of(models.begin(), models.end(), names_engine_id)) return body;
    std::string out;
    out.reserve(body.size() + engine_id.size() + 16);
    if (models.empty()) {
        const auto after_brace = scan.object_open + 1;
        out.append(text.substr(0, after_brace));
        out.append("\"model\":").append(engine_id);
        if (scan.members > 0) out += ',';
        out.append(text.substr(after_brace));
        return out;
    }
    std::size_t copied = 0;
    for (const auto& member : models) {
        out.append(text.substr(copied, member.begin - copied)).append(engine_id);
        copied = member.end;
    }
    out.append(text.substr(copied));
    return out;
}

ApiError api_error(const Error& refusal) {
    if (refusal.code == "invalid_api_key") {
        return {http::status::unauthorized, "authentication_error", refusal.code, refusal.message};
    }
    const auto status =
        refusal.code == "model_not_found" ? http::status::not_found : http::status::bad_request;
    return {status, "invalid_request_error", refusal.code, refusal.message};
}

std::string models_list_body(const ModelIdentity& model, long created_unix_seconds) {
    nlohmann::json data = nlohmann::json::array();
    auto entry = [&](const std::string& id) {
        return nlohmann::json{{"id", id},
                              {"object", "model"},
                              {"created", created_unix_seconds},
                              {"owned_by", "ensemble"}};
    };
    data.push_back(entry(model.handle));
    for (const auto& alias : model.aliases)
        data.push_back(entry(alias));
    return nlohmann::json{{"object", "list"}, {"data", data}}.dump();
}

}  // namespace ensemble
