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

ApiError bad_request(std::string code, std::string message) {
    return {http::status::bad_request, "invalid_request_error", std::move(code),
            std::move(message)};
}

}  // namespace

bool ModelIdentity::answers_to(std::string_view name) const {
    return name == handle || std::find(aliases.begin(), aliases.end(), name) != aliases.end();
}

std::optional<ApiError> check_api_key(std::string_view authorization_header,
                                      std::string_view api_key) {
    if (api_key.empty()) return std::nullopt;
    constexpr std::string_view kBearer = "Bearer ";
    if (authorization_header.substr(0, kBearer.size()) == kBearer &&
        constant_time_equal(authorization_header.substr(kBearer.size()), api_key)) {
        return std::nullopt;
    }
    const bool missing = authorization_header.empty();
    return ApiError{http::status::unauthorized, "authentication_error", "invalid_api_key",
                    missing ? "this port requires an API key: send 'Authorization: Bearer <key>'"
                            : "the API key is not valid for this port"};
}

std::variant<std::string, ApiError> pin_model(std::string_view body, const ModelIdentity& model) {
    auto parsed = parse_bounded_json(body);
    if (!parsed && parsed.error().code == "too_deep")
        return bad_request("invalid_json", "the request body is refused: " +
                                               parsed.error().message + "; flatten it");
    if (!parsed) {
        return bad_request("invalid_json",
                           "the request body is not valid JSON; send a JSON object such as "
                           "{\"model\": \"" +
                               model.handle + "\", \"messages\": [...]}");
    }
    auto& json = *parsed;
    if (!json.is_object())
        return bad_request("invalid_json", "the request body must be a JSON object");
    if (auto it = json.find("model"); it != json.end()) {
        if (!it->is_string()) return bad_request("invalid_model", "'model' must be a string");
        const auto name = it->get<std::string>();
        if (!model.answers_to(name)) {
            return ApiError{http::status::not_found, "invalid_request_error", "model_not_found",
                            "the model '" + name + "' is not served on this port; it serves '" +
                                model.handle + "' (see GET /v1/models)"};
        }
    }
    json["model"] = model.engine_model_id;
    return json.dump();
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
