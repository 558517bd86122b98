#include "protocol/messages.h"

#include <algorithm>
#include <array>

#include "protocol/worker_contract.h"

namespace ensemble::protocol {

namespace {

using nlohmann::json;

Error bad(const std::string& what) {
    return Error{"bad_message", what};
}

// Reads a message's fields one after another, each of the expected JSON type (a present field
// of another type is an error, an absent one only when required), and keeps the first failure.
class Fields {
  public:
    explicit Fields(const json& j) : j_(j) {}

    template <typename T>
    Fields& read(const char* key, T& out, bool required) {
        if (status_) status_ = read_one(key, out, required);
        return *this;
    }
    const Status& status() const { return status_; }

  private:
    template <typename T>
    Status read_one(const char* key, T& out, bool required) const {
        const auto it = j_.find(key);
        if (it == j_.end() || it->is_null()) {
            if (required) return bad(std::string("missing field '") + key + "'");
            return Ok{};
        }
        if constexpr (std::is_same_v<T, std::string>) {
            if (!it->is_string()) return bad(std::string("field '") + key + "' must be a string");
        } else if constexpr (std::is_same_v<T, bool>) {
            if (!it->is_boolean())
                return bad(std::string("field '") + key + "' must be true or false");
        } else {
            if (!it->is_number_integer())
                return bad(std::string("field '") + key + "' must be an integer");
            if constexpr (std::is_unsigned_v<T>) {
                if (it->get<std::int64_t>() < 0)
                    return bad(std::string("field '") + key + "' must not be negative");
            }
        }
        out = it->get<T>();
        return Ok{};
    }

    const json& j_;
    Status status_ = Ok{};
};

}  // namespace

json to_json(const Register& m) {
    return {{"type", "register"},    {"version", m.version}, {"worker_id", m.worker_id},
            {"token", m.token},      {"port", m.port},       {"pid", m.pid},
            {"handle", m.handle},    {"files", m.files},     {"front_door", m.front_door},
            {"settings", m.settings}};
}

json to_json(const KeepAlive& m) {
    return {{"type", "keep_alive"}, {"model", m.model}, {"port", m.port}, {"seconds", m.seconds}};
}

json to_json(const Demand& m) {
    return {{"type", "demand"}, {"model", m.model}};
}

json to_json(const Heartbeat& m) {
    const auto& s = m.stats;
    return {{"type", "heartbeat"},
            {"state", s.state},
            {"memory_bytes", s.memory_bytes},
            {"requests", s.requests},
            {"failed", s.failed},
            {"tokens", s.tokens},
            {"queue_depth", s.queue_depth},
            {"in_flight", s.in_flight},
            {"engine_pid", s.engine_pid},
            {"engine_start_time", s.engine_start_time},
            {"engine_group", s.engine_group},
            {"engine_restarts", s.engine_restarts},
            {"engine_last_exit", s.engine_last_exit},
            {"load_mapped_bytes", s.load_mapped_bytes},
            {"load_file_bytes", s.load_file_bytes}};
}

Result<WorkerMessage> parse_worker_message(const json& j) {
    if (!j.is_object()) return bad("a message must be a JSON object");
    std::string type;
    if (auto ok = Fields(j).read("type", type, true).status(); !ok) return ok.error();
    if (type == "register") {
        Register m;
        Fields fields(j);
        fields.read("version", m.version, true)
            .read("worker_id", m.worker_id, true)
            .read("token", m.token, true)
            .read("port", m.port, true)
            .read("pid", m.pid, true)
            .read("handle", m.handle, false)
            .read("files", m.files, false)
            .read("front_door", m.front_door, false)
            .read("settings", m.settings, false);
        if (!fields.status()) return fields.status().error();
        if (m.files < 0 || m.files >= kSlots)
            return bad("'files' must be 0 or 1, not " + std::to_string(m.files));
        if (m.version != kVersion) {
            return Error{"version_mismatch", "worker speaks protocol version " +
                                                 std::to_string(m.version) + ", the supervisor " +
                                                 std::to_string(kVersion) +
                                                 "; run matching binaries"};
        }
        return WorkerMessage{m};
    }
    if (type == "heartbeat") {
        Heartbeat m;
        auto& s = m.stats;
        Fields fields(j);
        fields.read("state", s.state, true)
            .read("memory_bytes", s.memory_bytes, false)
            .read("requests", s.requests, false)
            .read("failed", s.failed, false)
            .read("tokens", s.tokens, false)
            .read("queue_depth", s.queue_depth, false)
            .read("in_flight", s.in_flight, false)
            .read("engine_pid", s.engine_pid, false)
            .read("engine_start_time", s.engine_start_time, false)
            .read("engine_group", s.engine_group, false)
            .read("engine_restarts", s.engine_restarts, false)
            .read("engine_last_exit", s.engine_last_exit, false)
            .read("load_mapped_bytes", s.load_mapped_bytes, false)
            .read("load_file_bytes", s.load_file_bytes, false);
        if (!fields.status()) return fields.status().error();
        if (s.load_mapped_bytes > s.load_file_bytes)
            return bad("'load_mapped_bytes' must not exceed 'load_file_bytes'");
        return WorkerMessage{m};
    }
    if (type == "demand") {
        Demand m;
        if (auto ok = Fields(j).read("model", m.model, true).status(); !ok) return ok.error();
        if (!is_valid_handle(m.model)) return bad("'model' must be a model handle");
        return WorkerMessage{m};
    }
    if (type == "keep_alive") {
        KeepAlive m;
        Fields fields(j);
        fields.read("model", m.model, true)
            .read("port", m.port, true)
            .read("seconds", m.seconds, true);
        if (!fields.status()) return fields.status().error();
        if (!is_valid_handle(m.model)) return bad("'model' must be a model handle");
        if (m.port <= 0 || m.port > 65535) return bad("'port' is out of range");
        if (m.seconds < KeepAlive::kDefault || m.seconds > KeepAlive::kLongest) {
            return bad("'seconds' must be -2 (the default), -1 (for ever) or 0 to " +
                       std::to_string(KeepAlive::kLongest));
        }
        return WorkerMessage{m};
    }
    return Error{"unknown_message", "unknown message type '" + type + "'"};
}

json routes_message(const std::vector<Route>& routes) {
    json models = json::array();
    for (const auto& r : routes) {
        models.push_back({{"handle", r.handle},
                          {"aliases", r.aliases},
                          {"port", r.port},
                          {"state", r.state},
                          {"on_demand", r.on_demand},
                          {"path", r.path},
                          {"context", r.context},
                          {"tools", r.tools},
                          {"memory_bytes", r.memory_bytes},
                          {"expires_unix", r.expires_unix},
                          {"load_permille", r.load_permille},
                          {"load_measure", r.load_measure}});
    }
    return {{"type", "routes"}, {"models", std::move(models)}};
}

std::optional<Result<std::vector<Route>>> parse_routes(const json& message) {
    if (!message.is_object() || message.value("type", json()) != "routes") return std::nullopt;
    const auto models = message.find("models");
    if (models == message.end() || !models->is_array()) return {bad("'models' must be a list")};
    std::vector<Route> routes;
    for (const auto& m : *models) {
        if (!m.is_object()) return {bad("each of 'models' must be an object")};
        Route r;
        Fields fields(m);
        fields.read("handle", r.handle, true)
            .read("port", r.port, true)
            .read("state", r.state, true)
            .read("on_demand", r.on_demand, false)
            .read("path", r.path, false)
            .read("context", r.context, false)
            .read("tools", r.tools, false)
            .read("memory_bytes", r.memory_bytes, false)
            .read("expires_unix", r.expires_unix, false)
            .read("load_permille", r.load_permille, false)
            .read("load_measure", r.load_measure, false);
        if (!fields.status()) return {fields.status().error()};
        if (r.load_measure.size() > 16) return {bad("'load_measure' is longer than 16 bytes")};
        if (r.load_permille < 0 || r.load_permille > 1000)
            return {bad("'load_permille' must be 0 to 1000")};
        if (const auto aliases = m.find("aliases"); aliases != m.end()) {
            if (!aliases->is_array()) return {bad("'aliases' must be a list")};
            for (const auto& a : *aliases) {
                if (!a.is_string()) return {bad("each alias must be a string")};
                r.aliases.push_back(a.get<std::string>());
            }
        }
        if (r.port < 0 || r.port > 65535) return {bad("'port' is out of range")};
        routes.push_back(std::move(r));
    }
    return {std::move(routes)};
}

json demand_result_message(const DemandResult& result) {
    json j = {{"type", "demand_result"}, {"model", result.model}, {"ok", !result.refusal}};
    if (result.refusal)
        j["error"] = {{"code", result.refusal->code}, {"message", result.refusal->message}};
    return j;
}

std::optional<Result<DemandResult>> parse_demand_result(const json& message) {
    if (!message.is_object() || message.value("type", json()) != "demand_result")
        return std::nullopt;
    DemandResult r;
    bool ok = false;
    Fields fields(message);
    fields.read("model", r.model, true).read("ok", ok, true);
    if (!fields.status()) return {fields.status().error()};
    if (!ok) {
        Error refusal{"demand_refused", ""};
        if (const auto error = message.find("error"); error != message.end()) {
            Fields(*error)
                .read("code", refusal.code, false)
                .read("message", refusal.message, false);
        }
        r.refusal = refusal;
    }
    return {std::move(r)};
}

json registered_message() {
    return {{"type", "registered"}, {"version", kVersion}};
}
json stop_message() {
    return {{"type", "stop"}};
}
json serve_message() {
    return {{"type", "serve"}};
}

Result<ControlRequest> parse_control_request(const json& j) {
    if (!j.is_object()) return bad("a request must be a JSON object");
    ControlRequest r;
    std::string name;
    if (auto ok = Fields(j).read("verb", name, true).status(); !ok) return ok.error();
    const auto verb = verb_named(name);
    if (!verb) return Error{"unknown_verb", "unknown request '" + name + "'"};
    r.verb = *verb;
    const auto* shape = &info(*verb);
    int port = 0;
    Fields fields(j);
    fields.read("port", port, shape->needs_port)
        .read("model", r.model, shape->needs_model)
        .read("profile", r.profile, shape->needs_profile)
        .read("lines", r.lines, false)
        .read("wait", r.wait, false)
        .read("force", r.force, false);
    if (!fields.status()) return fields.status().error();
    if (shape->needs_profile && r.profile.empty()) return bad("'profile' must name a profile");
    if (!r.wait && !shape->starts_workers)
        return bad("'wait' applies to load, swap, restart and profile-load only");
    if (r.force && r.verb != Verb::load && r.verb != Verb::profile_load)
        return bad("'force' applies to load and profile-load only");
    if (j.contains("port")) {
        if (port < 1 || port > 65535)
            return bad("port " + std::to_string(port) + " is out of range 1-65535");
        r.port = port;
    }
    if (r.lines < 1 || r.lines > 100000) return bad("lines must be between 1 and 100000");
    return r;
}

json to_json(const ControlRequest& r) {
    json j = {{"verb", info(r.verb).name}};
    if (r.port) j["port"] = *r.port;
    if (!r.model.empty()) j["model"] = r.model;
    if (!r.profile.empty()) j["profile"] = r.profile;
    if (r.force) j["force"] = true;
    if (info(r.verb).takes_lines) j["lines"] = r.lines;
    if (!r.wait) j["wait"] = false;
    return j;
}

json ok_reply(json result) {
    return {{"ok", true}, {"result", std::move(result)}};
}

json error_reply(const Error& error) {
    return {{"ok", false}, {"error", {{"code", error.code}, {"message", error.message}}}};
}

}  // namespace ensemble::protocol
