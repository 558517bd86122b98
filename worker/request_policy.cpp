#include "worker/request_policy.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "protocol/bounded_json.h"

namespace ensemble {

namespace {

// Compares secrets in time independent of where they first differ.
bool constant_time_equal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    }
    return diff == 0;
}

}  // namespace

bool ModelIdentity::answers_to(std::string_view name) const {
    return name == handle || std::find(aliases.begin(), aliases.end(), name) != aliases.end();
}

Status check_api_key(std::string_view authorization_header, std::string_view api_key) {
    if (api_key.empty()) return Ok{};
    constexpr std::string_view kBearer = "Bearer ";
    if (authorization_header.substr(0, kBearer.size()) == kBearer &&
        constant_time_equal(authorization_header.substr(kBearer.size()), api_key)) {
        return Ok{};
    }
    const bool missing = authorization_header.empty();
    return Error{"invalid_api_key",
                 missing ? "this port requires an API key: send 'Authorization: Bearer <key>'"
                         : "the API key is not valid for this port"};
}

Result<std::string> pin_model(std::string_view body, const ModelIdentity& model) {
    auto parsed = parse_bounded_json(body);
    if (!parsed && parsed.error().code == "too_deep")
        return Error{"invalid_json",
                     "the request body is refused: " + parsed.error().message + "; flatten it"};
    if (!parsed) {
        return Error{"invalid_json",
                     "the request body is not valid JSON; send a JSON object such as "
                     "{\"model\": \"" +
                         model.handle + "\", \"messages\": [...]}"};
    }
    auto& json = *parsed;
    if (!json.is_object()) return Error{"invalid_json", "the request body must be a JSON object"};
    if (auto it = json.find("model"); it != json.end()) {
        if (!it->is_string()) return Error{"invalid_model", "'model' must be a string"};
        const auto name = it->get<std::string>();
        if (!model.answers_to(name)) {
            return Error{"model_not_found", "the model '" + name +
                                                "' is not served on this port; it serves '" +
                                                model.handle + "' (see GET /v1/models)"};
        }
    }
    json["model"] = model.engine_model_id;
    return json.dump();
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
