#include "protocol/messages.h"

#include <algorithm>
#include <array>

namespace ensemble::protocol {

namespace {

using nlohmann::json;

Error bad(const std::string& what) {
    return Error{"bad_message", what};
}

// Reads an optional field of the expected JSON type; a present field of another type is an error.
template <typename T>
std::optional<Error> read(const json& j, const char* key, T& out, bool required) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        if (required) return bad(std::string("missing field '") + key + "'");
        return std::nullopt;
    }
    if constexpr (std::is_same_v<T, std::string>) {
        if (!it->is_string()) return bad(std::string("field '") + key + "' must be a string");
    } else {
        if (!it->is_number_integer())
            return bad(std::string("field '") + key + "' must be an integer");
        if constexpr (std::is_unsigned_v<T>) {
            if (it->get<std::int64_t>() < 0)
                return bad(std::string("field '") + key + "' must not be negative");
        }
    }
    out = it->get<T>();
    return std::nullopt;
}

}  // namespace

json to_json(const Register& m) {
    return {{"type", "register"}, {"version", m.version}, {"worker_id", m.worker_id},
            {"token", m.token},   {"port", m.port},       {"pid", m.pid},
            {"handle", m.handle}};
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
            {"engine_pid", s.engine_pid},
            {"engine_start_time", s.engine_start_time},
            {"engine_group", s.engine_group},
            {"engine_restarts", s.engine_restarts},
            {"engine_last_exit", s.engine_last_exit}};
}

Result<WorkerMessage> parse_worker_message(const json& j) {
    if (!j.is_object()) return bad("a message must be a JSON object");
    std::string type;
    if (auto e = read(j, "type", type, true)) return *e;
    if (type == "register") {
        Register m;
        std::optional<Error> e;
        if ((e = read(j, "version", m.version, true)) ||
            (e = read(j, "worker_id", m.worker_id, true)) ||
            (e = read(j, "token", m.token, true)) || (e = read(j, "port", m.port, true)) ||
            (e = read(j, "pid", m.pid, true)) || (e = read(j, "handle", m.handle, false))) {
            return *e;
        }
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
        std::optional<Error> e;
        if ((e = read(j, "state", s.state, true)) ||
            (e = read(j, "memory_bytes", s.memory_bytes, false)) ||
            (e = read(j, "requests", s.requests, false)) ||
            (e = read(j, "failed", s.failed, false)) || (e = read(j, "tokens", s.tokens, false)) ||
            (e = read(j, "queue_depth", s.queue_depth, false)) ||
            (e = read(j, "engine_pid", s.engine_pid, false)) ||
            (e = read(j, "engine_start_time", s.engine_start_time, false)) ||
            (e = read(j, "engine_group", s.engine_group, false)) ||
            (e = read(j, "engine_restarts", s.engine_restarts, false)) ||
            (e = read(j, "engine_last_exit", s.engine_last_exit, false))) {
            return *e;
        }
        return WorkerMessage{m};
    }
    return Error{"unknown_message", "unknown message type '" + type + "'"};
}

json registered_message() {
    return {{"type", "registered"}, {"version", kVersion}};
}
json stop_message() {
    return {{"type", "stop"}};
}

Result<ControlRequest> parse_control_request(const json& j) {
    if (!j.is_object()) return bad("a request must be a JSON object");
    ControlRequest r;
    std::string name;
    if (auto e = read(j, "verb", name, true)) return *e;
    const auto verb = verb_named(name);
    if (!verb) return Error{"unknown_verb", "unknown request '" + name + "'"};
    r.verb = *verb;
    const auto* shape = &info(*verb);
    int port = 0;
    std::optional<Error> e;
    if ((e = read(j, "port", port, shape->needs_port)) ||
        (e = read(j, "model", r.model, shape->needs_model)) ||
        (e = read(j, "profile", r.profile, shape->needs_profile)) ||
        (e = read(j, "lines", r.lines, false))) {
        return *e;
    }
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
    if (info(r.verb).takes_lines) j["lines"] = r.lines;
    return j;
}

json ok_reply(json result) {
    return {{"ok", true}, {"result", std::move(result)}};
}

json error_reply(const Error& error) {
    return {{"ok", false}, {"error", {{"code", error.code}, {"message", error.message}}}};
}

}  // namespace ensemble::protocol
