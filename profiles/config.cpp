#include "profiles/config.h"

#include <yaml-cpp/yaml.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <regex>
#include <set>

#include "protocol/worker_contract.h"

namespace ensemble {

namespace {

using Keys = std::set<std::string>;

// Collects every problem with its position while walking the YAML tree.
class Validator {
  public:
    explicit Validator(std::vector<ConfigIssue>& issues) : issues_(issues) {}

    void at(const std::string& file, const YAML::Node& node, const std::string& message) {
        const auto mark = node.Mark();
        issues_.push_back({file, mark.line + 1, mark.column + 1, message});
    }

    // Checks a mapping's keys: unknown and duplicate keys are errors. Returns false if not a map.
    bool map_with_keys(const std::string& file, const YAML::Node& node, const std::string& what,
                       const Keys& allowed) {
        if (!node.IsMap()) {
            at(file, node, what + " must be a mapping");
            return false;
        }
        std::set<std::string> seen;
        for (const auto& kv : node) {
            const auto key = kv.first.Scalar();
            if (!seen.insert(key).second)
                at(file, kv.first, "duplicate key '" + key + "' in " + what);
            if (!allowed.empty() && !allowed.count(key)) {
                std::string list;
                for (const auto& k : allowed)
                    list += (list.empty() ? "" : ", ") + k;
                at(file, kv.first,
                   "unknown key '" + key + "' in " + what + " (allowed: " + list + ")");
            }
        }
        return true;
    }

    template <typename T>
    std::optional<T> scalar(const std::string& file, const YAML::Node& node,
                            const std::string& what) {
        if (!node.IsScalar()) {
            at(file, node, what + " must be a single value");
            return std::nullopt;
        }
        try {
            return node.as<T>();
        } catch (const YAML::Exception&) {
            at(file, node, what + " has an invalid value '" + node.Scalar() + "'");
            return std::nullopt;
        }
    }

    std::vector<std::string> strings(const std::string& file, const YAML::Node& node,
                                     const std::string& what) {
        std::vector<std::string> out;
        if (!node.IsSequence()) {
            at(file, node, what + " must be a list");
            return out;
        }
        for (const auto& item : node) {
            if (auto s = scalar<std::string>(file, item, what + " item")) out.push_back(*s);
        }
        return out;
    }

  private:
    std::vector<ConfigIssue>& issues_;
};

std::optional<int> int_in(Validator& v, const std::string& file, const YAML::Node& node,
                          const std::string& what, int lo, int hi) {
    auto value = v.scalar<long long>(file, node, what);
    if (!value) return std::nullopt;
    if (*value < lo || *value > hi) {
        v.at(file, node,
             what + " " + std::to_string(*value) + " is out of range " + std::to_string(lo) + "-" +
                 std::to_string(hi));
        return std::nullopt;
    }
    return static_cast<int>(*value);
}

std::optional<EvictPolicy> evict_policy(Validator& v, const std::string& file,
                                        const YAML::Node& node) {
    auto text = v.scalar<std::string>(file, node, "evict");
    if (!text) return std::nullopt;
    if (*text == "idle") return EvictPolicy::idle;
    if (*text == "never") return EvictPolicy::never;
    v.at(file, node, "evict '" + *text + "' must be 'idle' or 'never'");
    return std::nullopt;
}

std::optional<int> priority(Validator& v, const std::string& file, const YAML::Node& node) {
    return int_in(v, file, node, "priority", -1000, 1000);
}

std::filesystem::path expand_home(const std::string& path) {
    if (path.rfind("~/", 0) == 0) {
        if (const char* home = std::getenv("HOME"))
            return std::filesystem::path(home) / path.substr(2);
    }
    return path;
}

}  // namespace

std::filesystem::path default_state_dir() {
    if (::geteuid() == 0) return "/var/lib/ensemble";
    if (const char* s = std::getenv("XDG_STATE_HOME"); s && *s)
        return std::filesystem::path(s) / "ensemble";
    if (const char* h = std::getenv("HOME"); h && *h)
        return std::filesystem::path(h) / ".local/state/ensemble";
    return "/tmp/ensemble-state-" + std::to_string(::getuid());
}

std::filesystem::path default_run_dir() {
    if (::geteuid() == 0) return "/run/ensemble";
    if (const char* r = std::getenv("XDG_RUNTIME_DIR"); r && *r)
        return std::filesystem::path(r) / "ensemble";
    return "/tmp/ensemble-run-" + std::to_string(::getuid());
}

namespace {

class Loader {
  public:
    Loader(Config& config, std::vector<ConfigIssue>& issues, bool check_files)
        : config_(config), issues_(issues), v_(issues), check_files_(check_files) {}

    void load_file(const std::filesystem::path& path, bool top_level);
    void check_references();
    void check_chains();  // upstreams: defined, no cycles, in the same profile

  private:
    void supervisor(const std::string& file, const YAML::Node& node,
                    const std::filesystem::path& base);
    void logs(const std::string& file, const YAML::Node& node);
    void reserved_ports(const std::string& file, const YAML::Node& node);
    std::set<int> port_list(const std::string& file, const YAML::Node& node,
                            const std::string& what);
    std::optional<std::pair<std::string, int>> listen_address(const std::string& file,
                                                              const YAML::Node& node,
                                                              const std::string& what);
    void front_door(const std::string& file, const YAML::Node& node);
    void port_limits(const std::string& file, const YAML::Node& node);
    void naming(const std::string& file, const YAML::Node& node);
    void health(const std::string& file, const YAML::Node& node);
    void status_http(const std::string& file, const YAML::Node& supervisor,
                     const std::filesystem::path& base);
    void restart(const std::string& file, const YAML::Node& node);
    void duration(const std::string& file, const YAML::Node& node, const std::string& what,
                  std::chrono::milliseconds& out);
    void engines(const std::string& file, const YAML::Node& node,
                 const std::filesystem::path& base);
    std::map<std::string, std::string> environment(const std::string& file, const YAML::Node& node,
                                                   const std::string& what);
    void models(const std::string& file, const YAML::Node& node, const std::filesystem::path& base);
    void profiles(const std::string& file, const YAML::Node& node);
    void port(const std::string& file, const YAML::Node& key, const YAML::Node& value, Profile& p);

    Config& config_;
    std::vector<ConfigIssue>& issues_;
    Validator v_;
    bool check_files_;
    // Where each model was declared, for reference errors.
    std::map<std::string, std::pair<std::string, YAML::Mark>> model_marks_;
    std::vector<std::tuple<std::string, YAML::Node, std::string>>
        model_refs_;                                                   // file, node, handle
    std::vector<std::tuple<std::string, YAML::Node, int>> port_refs_;  // file, key, port
    std::vector<std::tuple<std::string, YAML::Node, std::string>>
        engine_refs_;  // file, node, engine
    std::vector<std::tuple<std::string, YAML::Node, std::string>>
        upstream_refs_;  // file, the `upstream:` node, the model that names it
    std::vector<std::tuple<std::string, YAML::Node, std::string, std::string>>
        assignment_refs_;  // file, port key, profile, model
    std::optional<std::pair<std::string, YAML::Node>> front_door_node_;
};

void Loader::load_file(const std::filesystem::path& path, bool top_level) {
    const auto file = path.string();
    YAML::Node root;
    try {
        root = YAML::LoadFile(file);
    } catch (const YAML::BadFile&) {
        issues_.push_back({file, 0, 0, "cannot read the file (does it exist, is it readable?)"});
        return;
    } catch (const YAML::ParserException& e) {
        issues_.push_back(
            {file, e.mark.line + 1, e.mark.column + 1, "YAML syntax error: " + e.msg});
        return;
    }
    if (root.IsNull()) return;  // an empty include is fine
    const Keys top_keys = top_level ? Keys{"supervisor", "include", "engines", "models", "profiles"}
                                    : Keys{"engines", "models", "profiles"};
    if (!v_.map_with_keys(file, root, "the configuration", top_keys)) return;
    const auto base = path.parent_path();
    if (top_level && root["supervisor"]) supervisor(file, root["supervisor"], base);
    if (root["engines"]) engines(file, root["engines"], base);
    if (root["models"]) models(file, root["models"], base);
    if (root["profiles"]) profiles(file, root["profiles"]);
    if (top_level && root["include"]) {
        auto dir = v_.scalar<std::string>(file, root["include"], "include");
        if (!dir) return;
        auto include_dir = base / expand_home(*dir);
        std::error_code ec;
        if (!std::filesystem::is_directory(include_dir, ec)) {
            v_.at(file, root["include"],
                  "include directory '" + include_dir.string() + "' does not exist");
            return;
        }
        std::vector<std::filesystem::path> files;
        for (const auto& entry : std::filesystem::directory_iterator(include_dir, ec)) {
            const auto ext = entry.path().extension();
            if (ext == ".yaml" || ext == ".yml") files.push_back(entry.path());
        }
        std::sort(files.begin(), files.end());  // a stable, documented order
        for (const auto& f : files)
            load_file(f, false);
    }
}

void Loader::supervisor(const std::string& file, const YAML::Node& node,
                        const std::filesystem::path& base) {
    if (!v_.map_with_keys(
            file, node, "supervisor",
            {"state_dir", "run_dir", "memory_budget", "over_budget", "evict_idle_after",
             "boot_profile", "bind_host", "hold_while_loading", "allow_privileged_ports",
             "reserved_ports", "naming", "gpu_wired_limit", "http", "http_token_file", "front_door",
             "port_limits", "logs", "health", "restart"})) {
        return;
    }
    auto& s = config_.supervisor;
    if (node["state_dir"]) {
        if (auto d = v_.scalar<std::string>(file, node["state_dir"], "state_dir"))
            s.state_dir = base / expand_home(*d);
    }
    if (node["run_dir"]) {
        if (auto d = v_.scalar<std::string>(file, node["run_dir"], "run_dir"))
            s.run_dir = base / expand_home(*d);
    }
    if (node["memory_budget"]) {
        if (auto b = v_.scalar<std::string>(file, node["memory_budget"], "memory_budget")) {
            static const std::regex kPercent(R"(^([1-9][0-9]?|100)%$)");
            if (!std::regex_match(*b, kPercent) && !parse_bytes(*b)) {
                v_.at(file, node["memory_budget"],
                      "memory_budget '" + *b +
                          "' must be a size (170GiB, 512MiB) or a share of RAM (85%)");
            }
            s.memory_budget = *b;
        }
    }
    if (node["over_budget"]) {
        if (auto o = v_.scalar<std::string>(file, node["over_budget"], "over_budget")) {
            if (*o != "warn" && *o != "stop-lowest")
                v_.at(file, node["over_budget"],
                      "over_budget '" + *o + "' must be 'warn' or 'stop-lowest'");
            s.memory.stop_lowest_over_budget = *o == "stop-lowest";
        }
    }
    if (node["evict_idle_after"])
        duration(file, node["evict_idle_after"], "evict_idle_after", s.memory.idle_after);
    if (node["boot_profile"]) {
        if (auto p = v_.scalar<std::string>(file, node["boot_profile"], "boot_profile"))
            s.boot_profile = *p;
    }
    if (node["bind_host"]) {
        if (auto h = v_.scalar<std::string>(file, node["bind_host"], "bind_host")) s.bind_host = *h;
    }
    if (node["hold_while_loading"]) {
        duration(file, node["hold_while_loading"], "hold_while_loading", s.hold_while_loading);
        if (s.hold_while_loading > std::chrono::hours(1))
            v_.at(file, node["hold_while_loading"], "hold_while_loading must be at most 1h");
    }
    if (node["allow_privileged_ports"]) {
        if (auto allow =
                v_.scalar<bool>(file, node["allow_privileged_ports"], "allow_privileged_ports"))
            s.allow_privileged_ports = *allow;
    }
    if (node["reserved_ports"]) reserved_ports(file, node["reserved_ports"]);
    if (node["naming"]) naming(file, node["naming"]);
    if (node["gpu_wired_limit"]) {
        if (auto w = v_.scalar<std::string>(file, node["gpu_wired_limit"], "gpu_wired_limit")) {
            const auto bytes = parse_bytes(*w);
            if (!bytes || *bytes < (1ULL << 30)) {
                v_.at(file, node["gpu_wired_limit"],
                      "gpu_wired_limit '" + *w + "' must be a size of at least 1GiB (e.g. 160GiB)");
            } else {
                s.gpu_wired_limit_bytes = bytes;
            }
        }
    }
    if (node["http"]) status_http(file, node, base);
    if (node["http_token_file"] && !node["http"])
        v_.at(file, node["http_token_file"], "http_token_file is set but http is not");
    if (node["front_door"]) front_door(file, node["front_door"]);
    if (node["port_limits"]) port_limits(file, node["port_limits"]);
    if (node["logs"]) logs(file, node["logs"]);
    if (node["health"]) health(file, node["health"]);
    if (node["restart"]) restart(file, node["restart"]);
}

// "8099", "127.0.0.1:8099", "[::1]:8099" or "0.0.0.0:8099": the host (127.0.0.1 if none) and
// port of a listener.
std::optional<std::pair<std::string, int>> Loader::listen_address(const std::string& file,
                                                                  const YAML::Node& node,
                                                                  const std::string& what) {
    auto text = v_.scalar<std::string>(file, node, what);
    if (!text) return std::nullopt;
    static const std::regex kListen(R"(^(?:(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):)?([0-9]{1,5})$)");
    std::smatch m;
    const int port = std::regex_match(*text, m, kListen) ? std::stoi(m[2].str()) : 0;
    if (port < 1 || port > 65535) {
        v_.at(file, node,
              what + " '" + *text +
                  "' must be HOST:PORT or PORT, e.g. 127.0.0.1:8099 (the port 1-65535)");
        return std::nullopt;
    }
    std::string host = "127.0.0.1";
    if (m[1].matched) {
        host = m[1].str();
        if (host.front() == '[') host = host.substr(1, host.size() - 2);
        if (host == "localhost") host = "127.0.0.1";
        in6_addr any{};
        if (::inet_pton(AF_INET, host.c_str(), &any) != 1 &&
            ::inet_pton(AF_INET6, host.c_str(), &any) != 1) {
            v_.at(file, node,
                  what + " '" + *text + "': '" + host +
                      "' is not an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0)");
            return std::nullopt;
        }
    }
    return std::pair{host, port};
}

// front_door: {listen: 127.0.0.1:11434, on_demand: listed|all, ports: ["8110-8119"],
// evict_idle_after: 5m, load_timeout: 10m, queue_max: 64}
void Loader::front_door(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(
            file, node, "supervisor.front_door",
            {"listen", "on_demand", "ports", "evict_idle_after", "load_timeout", "queue_max"})) {
        return;
    }
    FrontDoorSettings door;
    if (!node["listen"]) {
        v_.at(file, node, "front_door needs 'listen' (e.g. listen: 127.0.0.1:11434)");
        return;
    }
    auto address = listen_address(file, node["listen"], "front_door.listen");
    if (!address) return;
    door.host = address->first;
    door.port = address->second;
    if (auto allowed = check_port_allowed(config_.supervisor, door.port); !allowed)
        v_.at(file, node["listen"], allowed.error().message);
    if (node["on_demand"]) {
        if (auto o = v_.scalar<std::string>(file, node["on_demand"], "front_door.on_demand")) {
            if (*o != "listed" && *o != "all")
                v_.at(file, node["on_demand"],
                      "front_door.on_demand '" + *o +
                          "' must be 'listed' (models with on_demand: true) or 'all'");
            door.on_demand_all = *o == "all";
        }
    }
    if (node["ports"]) door.ports = port_list(file, node["ports"], "front_door.ports");
    if (door.ports.contains(door.port))
        v_.at(file, node["ports"],
              "front_door.ports includes the front door's own port " + std::to_string(door.port));
    for (const int port : door.ports) {
        if (auto allowed = check_port_allowed(config_.supervisor, port); !allowed) {
            v_.at(file, node["ports"], allowed.error().message);
            break;
        }
    }
    if (node["evict_idle_after"])
        duration(file, node["evict_idle_after"], "front_door.evict_idle_after",
                 door.evict_idle_after);
    if (node["load_timeout"]) {
        duration(file, node["load_timeout"], "front_door.load_timeout", door.load_timeout);
        if (door.load_timeout < std::chrono::seconds(1) ||
            door.load_timeout > std::chrono::hours(24))
            v_.at(file, node["load_timeout"], "front_door.load_timeout must be 1s to 24h");
    }
    if (node["queue_max"]) {
        if (auto q = v_.scalar<int>(file, node["queue_max"], "front_door.queue_max")) {
            if (*q < 1 || *q > 100000)
                v_.at(file, node["queue_max"], "front_door.queue_max must be 1 to 100000");
            else
                door.queue_max = static_cast<std::size_t>(*q);
        }
    }
    front_door_node_ = {file, node};
    config_.supervisor.front_door = door;
}

void Loader::status_http(const std::string& file, const YAML::Node& supervisor,
                         const std::filesystem::path& base) {
    const auto& node = supervisor["http"];
    auto text = v_.scalar<std::string>(file, node, "http");
    if (!text) return;
    auto address = listen_address(file, node, "http");
    if (!address) return;
    StatusHttpSettings http;
    http.host = address->first;
    http.port = address->second;
    const int port = http.port;
    if (auto allowed = check_port_allowed(config_.supervisor, port); !allowed)
        v_.at(file, node, allowed.error().message);
    if (const auto& token = supervisor["http_token_file"]) {
        if (auto path = v_.scalar<std::string>(file, token, "http_token_file")) {
            if (path->empty())
                v_.at(file, token, "http_token_file is empty: name the token's file, or remove it");
            else
                http.token_file = base / expand_home(*path);
        }
    }
    if (http.token_file.empty() && !is_loopback_host(http.host)) {
        v_.at(file, node,
              "http '" + *text +
                  "' is reachable from other machines and no http_token_file is set: set one "
                  "(a file, mode 0600, holding a long random token), or listen on 127.0.0.1");
    }
    config_.supervisor.http = http;
}

void Loader::duration(const std::string& file, const YAML::Node& node, const std::string& what,
                      std::chrono::milliseconds& out) {
    auto text = v_.scalar<std::string>(file, node, what);
    if (!text) return;
    if (auto d = parse_duration(*text)) {
        out = *d;
        return;
    }
    v_.at(file, node, what + " '" + *text + "' must be a duration such as 500ms, 5s or 2m");
}

// reserved_ports: [8108, 8109] or ["8108-8109"]; a range holds at most 1,000 ports.
void Loader::reserved_ports(const std::string& file, const YAML::Node& node) {
    config_.supervisor.reserved_ports.merge(port_list(file, node, "reserved_ports"));
}

// [8108, 8109] or ["8108-8109"]; a range holds at most 1,000 ports.
std::set<int> Loader::port_list(const std::string& file, const YAML::Node& node,
                                const std::string& what) {
    std::set<int> ports;
    for (const auto& text : v_.strings(file, node, what)) {
        static const std::regex kPortOrRange(R"(^([0-9]{1,5})(?:-([0-9]{1,5}))?$)");
        std::smatch m;
        const int first = std::regex_match(text, m, kPortOrRange) ? std::stoi(m[1]) : 0;
        const int last = m[2].matched ? std::stoi(m[2]) : first;
        if (first < 1 || last > 65535 || last < first || last - first >= 1000) {
            v_.at(file, node,
                  what + " item '" + text +
                      "' must be a port (8108) or a range of at most 1000 (8108-8109) in 1-65535");
            continue;
        }
        for (int port = first; port <= last; ++port)
            ports.insert(port);
    }
    return ports;
}

// naming: {mlx-lm: mlx-, optillm: opt-} (presets, or engines under `engines`): kebab-case
// prefixes ending in '-'.
void Loader::naming(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(file, node, "supervisor.naming", {})) return;
    static const std::regex kPrefix(R"(^[a-z0-9]+(-[a-z0-9]+)*-$)");
    for (const auto& kv : node) {
        const auto engine = kv.first.Scalar();
        auto prefix = v_.scalar<std::string>(file, kv.second, "supervisor.naming." + engine);
        if (!prefix) continue;
        if (!std::regex_match(*prefix, kPrefix)) {
            v_.at(file, kv.second,
                  "naming prefix '" + *prefix + "' must be kebab-case ending in '-' (mlx-)");
            continue;
        }
        config_.supervisor.naming[engine] = *prefix;
        engine_refs_.emplace_back(file, kv.first, engine);
    }
}

namespace {

// A limit's value as the config writes it: 32MiB, 1024, 60s.
std::string limit_text(protocol::PortLimitUnit unit, std::uint64_t value) {
    if (unit == protocol::PortLimitUnit::seconds)
        return duration_text(std::chrono::seconds(static_cast<std::int64_t>(value)));
    if (unit == protocol::PortLimitUnit::count) return std::to_string(value);
    for (const auto& [scale, name] :
         {std::pair{1ULL << 30, "GiB"}, {1ULL << 20, "MiB"}, {1ULL << 10, "KiB"}}) {
        if (value % scale == 0) return std::to_string(value / scale) + name;
    }
    return std::to_string(value) + "B";
}

}  // namespace

// supervisor.port_limits: the listener limits of every public port (protocol/port_limits.h).
void Loader::port_limits(const std::string& file, const YAML::Node& node) {
    Keys keys;
    for (const auto* limit : protocol::kPortLimits)
        keys.emplace(limit->key);
    if (!v_.map_with_keys(file, node, "supervisor.port_limits", keys)) return;
    for (std::size_t i = 0; i < protocol::kPortLimits.size(); ++i) {
        const auto& limit = *protocol::kPortLimits[i];
        const auto value_node = node[std::string(limit.key)];
        if (!value_node) continue;
        const auto what = "port_limits." + std::string(limit.key);
        auto text = v_.scalar<std::string>(file, value_node, what);
        if (!text) continue;
        std::optional<std::uint64_t> value;
        std::string shape;
        if (limit.unit == protocol::PortLimitUnit::bytes) {
            value = parse_bytes(*text);
            shape = "a size";
        } else if (limit.unit == protocol::PortLimitUnit::seconds) {
            const auto duration = parse_duration(*text);
            if (duration && duration->count() % 1000 == 0)
                value = static_cast<std::uint64_t>(duration->count() / 1000);
            shape = "a duration in whole seconds";
        } else {
            static const std::regex kCount(R"(^\s*([0-9]{1,12})\s*$)");
            if (std::regex_match(*text, kCount)) value = std::stoull(*text);
            shape = "a number";
        }
        if (!value || *value < limit.least || *value > limit.most) {
            v_.at(file, value_node,
                  what + " '" + *text + "' must be " + shape + " from " +
                      limit_text(limit.unit, limit.least) + " to " +
                      limit_text(limit.unit, limit.most));
            continue;
        }
        config_.supervisor.port_limits[i] = value;
    }
}

void Loader::logs(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(file, node, "supervisor.logs", {"max_size", "keep"})) return;
    auto& l = config_.supervisor.logs;
    if (node["max_size"]) {
        auto text = v_.scalar<std::string>(file, node["max_size"], "logs.max_size");
        auto bytes = text ? parse_bytes(*text) : std::nullopt;
        if (bytes && *bytes >= 4096)
            l.max_bytes = *bytes;
        else if (text)
            v_.at(file, node["max_size"],
                  "logs.max_size '" + *text + "' must be a size of at least 4KiB, such as 50MiB");
    }
    if (node["keep"]) {
        if (auto k = int_in(v_, file, node["keep"], "logs.keep", 1, 100)) l.keep = *k;
    }
}

void Loader::health(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(file, node, "supervisor.health",
                          {"missed_heartbeats", "kill_grace", "drain_timeout", "stop_timeout",
                           "probe_interval", "probe_timeout", "probe_failures",
                           "engine_probe_interval", "engine_probe_failures"})) {
        return;
    }
    auto& h = config_.supervisor.health;
    if (node["missed_heartbeats"]) {
        if (auto n = int_in(v_, file, node["missed_heartbeats"], "health.missed_heartbeats", 2, 60))
            h.missed_heartbeats = *n;
    }
    if (node["kill_grace"]) duration(file, node["kill_grace"], "health.kill_grace", h.kill_grace);
    if (node["drain_timeout"]) {
        duration(file, node["drain_timeout"], "health.drain_timeout", h.drain_timeout);
        if (h.drain_timeout > protocol::kMaxDrainTimeout) {
            v_.at(file, node["drain_timeout"],
                  "health.drain_timeout must be at most " +
                      std::to_string(protocol::kMaxDrainTimeout.count()) + "h");
        }
        // A worker asked to stop may take its drain and its engine's stop before it is killed.
        h.stop_timeout = protocol::least_stop_timeout(h.drain_timeout);
    }
    if (node["stop_timeout"]) {
        duration(file, node["stop_timeout"], "health.stop_timeout", h.stop_timeout);
        const auto least = protocol::least_stop_timeout(h.drain_timeout);
        if (node["drain_timeout"] && h.stop_timeout < least) {
            v_.at(file, node["stop_timeout"],
                  "health.stop_timeout must be at least " + duration_text(least) +
                      " with this drain_timeout: a worker asked to stop lets its requests finish "
                      "for up to drain_timeout (" +
                      duration_text(h.drain_timeout) + "), then stops its engine (up to " +
                      duration_text(protocol::kEngineStopGrace) +
                      "), and would be killed while it drains; raise stop_timeout, or leave it "
                      "out to have it follow drain_timeout");
        }
    }
    if (node["probe_interval"])
        duration(file, node["probe_interval"], "health.probe_interval", h.probe_interval);
    if (node["probe_timeout"])
        duration(file, node["probe_timeout"], "health.probe_timeout", h.probe_timeout);
    if (node["probe_failures"]) {
        if (auto n = int_in(v_, file, node["probe_failures"], "health.probe_failures", 1, 100))
            h.probe_failures = *n;
    }
    if (node["engine_probe_interval"])
        duration(file, node["engine_probe_interval"], "health.engine_probe_interval",
                 h.engine_probe_interval);
    if (node["engine_probe_failures"]) {
        if (auto n = int_in(v_, file, node["engine_probe_failures"], "health.engine_probe_failures",
                            1, 100))
            h.engine_probe_failures = *n;
    }
}

void Loader::restart(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(file, node, "supervisor.restart",
                          {"first_backoff", "max_backoff", "healthy_after", "crash_loop_failures",
                           "crash_loop_window"})) {
        return;
    }
    auto& r = config_.supervisor.restart;
    if (node["first_backoff"])
        duration(file, node["first_backoff"], "restart.first_backoff", r.first_backoff);
    if (node["max_backoff"])
        duration(file, node["max_backoff"], "restart.max_backoff", r.max_backoff);
    if (node["healthy_after"])
        duration(file, node["healthy_after"], "restart.healthy_after", r.healthy_after);
    if (node["crash_loop_failures"]) {
        if (auto n = int_in(v_, file, node["crash_loop_failures"], "restart.crash_loop_failures", 1,
                            1000))
            r.crash_loop_failures = *n;
    }
    if (node["crash_loop_window"])
        duration(file, node["crash_loop_window"], "restart.crash_loop_window", r.crash_loop_window);
    if (r.max_backoff < r.first_backoff)
        v_.at(file, node, "restart.max_backoff must not be shorter than restart.first_backoff");
}

void Loader::engines(const std::string& file, const YAML::Node& node,
                     const std::filesystem::path& base) {
    if (!v_.map_with_keys(file, node, "engines", {})) return;
    for (const auto& kv : node) {
        const auto name = kv.first.Scalar();
        const auto& e = kv.second;
        if (!v_.map_with_keys(file, e, "engine '" + name + "'",
                              {"preset", "binary", "args", "command", "ready_path", "env",
                               "load_stall_timeout"})) {
            continue;
        }
        EngineSpec spec;
        spec.name = name;
        const auto preset_name = e["preset"] ? v_.scalar<std::string>(file, e["preset"], "preset")
                                             : std::optional<std::string>("command");
        if (!preset_name) continue;
        if (*preset_name == "command") {
            if (!e["command"]) {
                v_.at(file, e, "engine '" + name + "' uses preset 'command' and needs a 'command'");
                continue;
            }
            auto cmd = v_.scalar<std::string>(file, e["command"], "command");
            const auto ready = e["ready_path"]
                                   ? v_.scalar<std::string>(file, e["ready_path"], "ready_path")
                                   : std::optional<std::string>("/v1/models");
            if (!cmd || !ready) continue;
            auto preset = command_preset(*cmd, *ready);
            if (!preset) {
                v_.at(file, e["command"], preset.error().message);
                continue;
            }
            spec.preset = *preset;
            spec.command = *cmd;
            spec.ready_path = *ready;
        } else {
            auto preset = find_preset(*preset_name);
            if (!preset) {
                v_.at(file, e["preset"], preset.error().message);
                continue;
            }
            if (e["command"]) v_.at(file, e["command"], "'command' is only for preset 'command'");
            spec.preset = *preset;
        }
        if (e["binary"]) {
            if (auto b = v_.scalar<std::string>(file, e["binary"], "binary")) {
                // A relative path is relative to this file; a bare name is looked up on PATH.
                const auto path = expand_home(*b);
                spec.binary = path.is_relative() && b->find('/') != std::string::npos
                                  ? std::filesystem::weakly_canonical(base / path).string()
                                  : path.string();
            }
        }
        if (e["args"]) spec.args = v_.strings(file, e["args"], "args");
        if (e["env"]) spec.env = environment(file, e["env"], "engine '" + name + "' env");
        if (e["load_stall_timeout"]) {
            std::chrono::milliseconds stall{-1};  // stays -1 when the text is not a duration
            duration(file, e["load_stall_timeout"], "load_stall_timeout", stall);
            if (stall >= std::chrono::seconds(1) && stall <= std::chrono::hours(24)) {
                spec.load_stall_timeout = stall;
            } else if (stall.count() >= 0) {
                v_.at(file, e["load_stall_timeout"],
                      "load_stall_timeout must be between 1s and 24h (a load is judged every "
                      "second)");
            }
        }
        if (find_preset(name)) {
            v_.at(file, kv.first,
                  "engine '" + name +
                      "' has a preset's name; call it something else (models "
                      "name the preset itself with engine: " +
                      name + ")");
        } else if (config_.engines.count(name)) {
            v_.at(file, kv.first, "engine '" + name + "' is defined twice");
        }
        config_.engines[name] = spec;
    }
}

std::map<std::string, std::string> Loader::environment(const std::string& file,
                                                       const YAML::Node& node,
                                                       const std::string& what) {
    constexpr std::size_t kMaxValue = 32 * 1024;
    std::map<std::string, std::string> env;
    if (!v_.map_with_keys(file, node, what, {})) return env;
    std::size_t total = 0;
    for (const auto& kv : node) {
        const auto name = kv.first.Scalar();
        if (const auto ok = check_engine_env_name(name); !ok) {
            v_.at(file, kv.first,
                  "environment variable '" + name + "' in " + what + ": " + ok.error().message);
            continue;
        }
        if (kv.second.IsNull()) {
            v_.at(file, kv.first,
                  "environment variable '" + name + "' in " + what + " has no value (write \"\")");
            continue;
        }
        auto value =
            v_.scalar<std::string>(file, kv.second, "the value of " + name + " in " + what);
        if (!value) continue;
        if (value->size() > kMaxValue || value->find('\0') != std::string::npos) {
            v_.at(file, kv.second,
                  "the value of " + name + " in " + what + " is longer than 32 KiB or holds a NUL");
            continue;
        }
        total += name.size() + value->size() + 2;
        env[name] = *value;
    }
    if (total > kMaxEngineEnvBytes) {
        v_.at(file, node,
              what + " holds " + std::to_string(total / 1024) + " KiB in all, more than the " +
                  std::to_string(kMaxEngineEnvBytes / 1024) +
                  " KiB an engine's environment may take (the OS limits what a program is "
                  "started with)");
    }
    return env;
}

void Loader::models(const std::string& file, const YAML::Node& node,
                    const std::filesystem::path& base) {
    if (!v_.map_with_keys(file, node, "models", {})) return;
    for (const auto& kv : node) {
        const auto handle = kv.first.Scalar();
        if (!protocol::is_valid_handle(handle))
            v_.at(file, kv.first, "model handle '" + handle + "' " + protocol::kHandleRule);
        const auto& m = kv.second;
        if (!v_.map_with_keys(
                file, m, "model '" + handle + "'",
                {"engine", "path", "context", "parallel", "memory", "priority", "evict", "aliases",
                 "accept_any_model", "on_demand", "upstream", "args"})) {
            continue;
        }
        ModelSpec spec;
        spec.handle = handle;
        spec.engine = "llama.cpp";
        if (m["engine"]) {
            if (auto e = v_.scalar<std::string>(file, m["engine"], "engine")) spec.engine = *e;
            engine_refs_.emplace_back(file, m["engine"], spec.engine);
        }
        if (m["upstream"]) {
            if (auto u = v_.scalar<std::string>(file, m["upstream"], "upstream"); u && u->empty()) {
                v_.at(file, m["upstream"],
                      "upstream names no model; name the model it runs "
                      "in front of, or leave 'upstream' out");
            } else if (u) {
                spec.upstream = *u;
                upstream_refs_.emplace_back(file, m["upstream"], handle);
            }
        }
        if (!m["path"] && m["upstream"]) {
            spec.path = spec.upstream;  // {model}: what the proxy asks its upstream for
        } else if (!m["path"]) {
            v_.at(file, m,
                  "model '" + handle + "' needs a 'path' (model file, directory or repo id)");
        } else if (auto p = v_.scalar<std::string>(file, m["path"], "path")) {
            const bool looks_local = p->rfind('/', 0) == 0 || p->rfind("./", 0) == 0 ||
                                     p->rfind("../", 0) == 0 || p->rfind("~/", 0) == 0 ||
                                     p->ends_with(".gguf");
            spec.path = looks_local
                            ? std::filesystem::weakly_canonical(base / expand_home(*p)).string()
                            : *p;
            std::error_code ec;
            if (check_files_ && looks_local && !std::filesystem::exists(spec.path, ec)) {
                v_.at(file, m["path"], "model file '" + spec.path + "' does not exist");
            }
        }
        if (m["context"])
            spec.context =
                int_in(v_, file, m["context"], "context", 1, 1 << 24).value_or(spec.context);
        if (m["parallel"])
            spec.parallel =
                int_in(v_, file, m["parallel"], "parallel", 1, 1024).value_or(spec.parallel);
        if (m["memory"]) {
            if (auto text = v_.scalar<std::string>(file, m["memory"], "memory")) {
                spec.memory_bytes = parse_bytes(*text);
                if (!spec.memory_bytes)
                    v_.at(file, m["memory"], "memory '" + *text + "' must be a size such as 12GiB");
            }
        }
        if (m["priority"]) spec.priority = priority(v_, file, m["priority"]).value_or(0);
        if (m["evict"]) spec.evict = evict_policy(v_, file, m["evict"]).value_or(spec.evict);
        if (m["aliases"]) spec.aliases = v_.strings(file, m["aliases"], "aliases");
        if (m["on_demand"]) {
            if (auto on = v_.scalar<bool>(file, m["on_demand"], "on_demand")) spec.on_demand = *on;
        }
        if (m["accept_any_model"]) {
            if (auto any = v_.scalar<bool>(file, m["accept_any_model"], "accept_any_model"))
                spec.accept_any_model = *any;
        }
        if (m["args"]) spec.args = v_.strings(file, m["args"], "args");
        if (model_marks_.count(handle)) {
            v_.at(file, kv.first,
                  "model '" + handle + "' is already defined at " + model_marks_[handle].first +
                      ":" + std::to_string(model_marks_[handle].second.line + 1));
        }
        model_marks_[handle] = {file, kv.first.Mark()};
        config_.models[handle] = spec;
    }
}

void Loader::port(const std::string& file, const YAML::Node& key, const YAML::Node& value,
                  Profile& p) {
    auto port = int_in(v_, file, key, "port", 1, 65535);
    if (!port) return;
    port_refs_.emplace_back(file, key, *port);
    PortAssignment a;
    a.port = *port;
    if (value.IsScalar()) {
        a.model = value.Scalar();
        model_refs_.emplace_back(file, value, a.model);
    } else if (v_.map_with_keys(file, value, "port " + std::to_string(*port),
                                {"model", "context", "parallel", "priority", "evict"})) {
        if (!value["model"]) {
            v_.at(file, value, "port " + std::to_string(*port) + " needs a 'model'");
            return;
        }
        if (auto m = v_.scalar<std::string>(file, value["model"], "model")) {
            a.model = *m;
            model_refs_.emplace_back(file, value["model"], a.model);
        }
        if (value["context"]) a.context = int_in(v_, file, value["context"], "context", 1, 1 << 24);
        if (value["parallel"])
            a.parallel = int_in(v_, file, value["parallel"], "parallel", 1, 1024);
        if (value["priority"]) a.priority = priority(v_, file, value["priority"]);
        if (value["evict"]) a.evict = evict_policy(v_, file, value["evict"]);
    } else {
        return;
    }
    if (p.ports.count(*port)) {
        v_.at(file, key,
              "port " + std::to_string(*port) + " appears twice in profile '" + p.name + "'");
        return;
    }
    p.ports[*port] = a;
    assignment_refs_.emplace_back(file, key, p.name, a.model);
}

void Loader::profiles(const std::string& file, const YAML::Node& node) {
    if (!v_.map_with_keys(file, node, "profiles", {})) return;
    for (const auto& kv : node) {
        const auto name = kv.first.Scalar();
        if (config_.profiles.count(name)) {
            v_.at(file, kv.first, "profile '" + name + "' is defined twice");
            continue;
        }
        Profile p;
        p.name = name;
        if (!kv.second.IsMap()) {
            v_.at(file, kv.second, "profile '" + name + "' must map ports to models");
            continue;
        }
        for (const auto& entry : kv.second) {
            // Besides ports, a profile may set priority and evict for all of its ports.
            const auto key = entry.first.Scalar();
            if (key == "priority") {
                p.priority = priority(v_, file, entry.second);
            } else if (key == "evict") {
                p.evict = evict_policy(v_, file, entry.second);
            } else {
                port(file, entry.first, entry.second, p);
            }
        }
        config_.profiles[name] = p;
    }
}

void Loader::check_references() {
    for (const auto& [file, node, engine] : engine_refs_) {
        if (!config_.engines.count(engine) && !find_preset(engine)) {
            std::string presets;
            for (const auto& name : preset_names())
                if (name != "command") presets += (presets.empty() ? "" : ", ") + name;
            v_.at(file, node,
                  "engine '" + engine + "' is neither defined under 'engines' nor a preset (" +
                      presets + ")");
        }
    }
    for (const auto& [file, node, handle] : model_refs_) {
        if (!config_.models.count(handle))
            v_.at(file, node, "model '" + handle + "' is not defined under 'models'");
    }
    const auto& http = config_.supervisor.http;
    const auto& door = config_.supervisor.front_door;
    for (const auto& [file, node, port] : port_refs_) {
        if (auto allowed = check_port_allowed(config_.supervisor, port); !allowed)
            v_.at(file, node, allowed.error().message);
        if (http && http->port == port)
            v_.at(file, node,
                  "port " + std::to_string(port) +
                      " is supervisor.http's status listener; give one of them another port");
        if (door && door->port == port)
            v_.at(file, node,
                  "port " + std::to_string(port) +
                      " is supervisor.front_door's; give one of them another port");
        if (door && door->ports.contains(port))
            v_.at(file, node,
                  "port " + std::to_string(port) +
                      " is in supervisor.front_door.ports, where models are loaded on demand; "
                      "a profile may not use it");
    }
    for (const auto& [handle, model] : config_.models) {
        if (!model.on_demand || door) continue;
        const auto& [file, mark] = model_marks_[handle];
        issues_.push_back({file, mark.line + 1, mark.column + 1,
                           "model '" + handle +
                               "' is on_demand, but there is no supervisor.front_door to load it "
                               "from"});
    }
    if (door && door->ports.empty() && front_door_node_) {
        const bool any =
            door->on_demand_all || std::any_of(config_.models.begin(), config_.models.end(),
                                               [](const auto& m) { return m.second.on_demand; });
        if (any)
            v_.at(front_door_node_->first, front_door_node_->second,
                  "models are loaded on demand, but front_door has no 'ports' to load them on "
                  "(e.g. ports: [\"8110-8119\"])");
    }
    if (door && front_door_node_) {
        for (const int port : door->ports) {
            if (!config_.supervisor.reserved_ports.contains(port)) continue;
            v_.at(front_door_node_->first, front_door_node_->second,
                  "front_door.ports includes port " + std::to_string(port) +
                      ", which supervisor.reserved_ports keeps free; remove it from one of them");
            break;
        }
    }
    if (door && http && http->port == door->port && front_door_node_)
        v_.at(front_door_node_->first, front_door_node_->second,
              "front_door and http use the same port " + std::to_string(door->port));
    const auto& boot = config_.supervisor.boot_profile;
    if (!boot.empty() && !config_.profiles.count(boot)) {
        issues_.push_back({config_.source.string(), 0, 0,
                           "boot_profile '" + boot + "' is not defined under 'profiles'"});
    } else if (!boot.empty()) {
        for (const auto& [port, _] : config_.profiles.at(boot).ports) {
            if (config_.supervisor.reserved_ports.contains(port))
                issues_.push_back({config_.source.string(), 0, 0,
                                   "boot_profile '" + boot + "' uses port " + std::to_string(port) +
                                       ", which supervisor.reserved_ports keeps free; move the "
                                       "profile's model to another port or unreserve it"});
        }
    }
}

void Loader::check_chains() {
    for (const auto& [file, node, handle] : upstream_refs_) {
        const auto& upstream = config_.models.at(handle).upstream;
        if (upstream == handle) {
            v_.at(file, node, "model '" + handle + "' names itself as its upstream");
        } else if (!config_.models.count(upstream)) {
            v_.at(file, node,
                  "model '" + handle + "' runs in front of '" + upstream +
                      "', which is not defined under 'models'");
        } else {
            // Follow the chain: it must end at a model of its own, not come back. A cycle is
            // reported once, at its first model by name (a model leading into one is not in it).
            std::vector<std::string> chain{handle};
            for (auto next = upstream; !next.empty();) {
                const auto seen = std::find(chain.begin(), chain.end(), next);
                if (seen != chain.end()) {
                    const bool report = seen == chain.begin() &&
                                        *std::min_element(chain.begin(), chain.end()) == handle;
                    std::string cycle;
                    for (const auto& h : chain)
                        cycle += "'" + h + "' -> ";
                    if (report) {
                        v_.at(file, node,
                              "upstreams form a cycle: " + cycle + "'" + next +
                                  "'; a chain must end at a model that serves on its own");
                    }
                    break;
                }
                chain.push_back(next);
                const auto* m = config_.find_model(next);
                next = m != nullptr ? m->upstream : "";
            }
        }
        // Only an engine that is told where the upstream is can run in front of it.
        const auto* engine = config_.engine_of(config_.models.at(handle));
        if (engine != nullptr && !uses_upstream(engine->preset)) {
            v_.at(file, node,
                  "model '" + handle + "' names an upstream, but its engine '" +
                      config_.models.at(handle).engine +
                      "' is not told where it is: use the optillm preset, or a command with "
                      "{upstream_url}");
        }
    }
    // A profile replaces every port: a chained model's upstream must be one of its own.
    for (const auto& [file, key, profile, handle] : assignment_refs_) {
        const auto* model = config_.find_model(handle);
        if (model == nullptr || model->upstream.empty() || !config_.models.count(model->upstream))
            continue;
        const auto& ports = config_.profiles[profile].ports;
        const bool served = std::any_of(ports.begin(), ports.end(), [&](const auto& port) {
            return port.second.model == model->upstream;
        });
        if (!served) {
            v_.at(file, key,
                  "profile '" + profile + "' serves '" + handle + "', which runs in front of '" +
                      model->upstream + "', but no port of the profile serves '" + model->upstream +
                      "'; add it to the profile");
        }
    }
    // An engine whose command uses the upstream's URL needs a model that names one.
    for (const auto& [handle, model] : config_.models) {
        const auto* engine = config_.engine_of(model);
        if (engine == nullptr || !model.upstream.empty() || !uses_upstream(engine->preset) ||
            model.path.empty())  // `upstream:` is there but names nothing: said above
            continue;
        const auto& [file, mark] = model_marks_.at(handle);
        issues_.push_back({file, mark.line + 1, mark.column + 1,
                           "model '" + handle + "' runs on engine '" + model.engine +
                               "', whose command uses {upstream_url} or {upstream_handle}: name "
                               "the model it runs in front of with 'upstream:'"});
    }
}

}  // namespace

bool is_loopback_host(const std::string& host) {
    if (host == "localhost") return true;
    in_addr v4{};
    if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
    in6_addr v6{};
    return ::inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

Status check_port_allowed(const SupervisorSettings& settings, int port) {
    constexpr int kFirstUnprivileged = 1024;
    if (port >= kFirstUnprivileged || settings.allow_privileged_ports) return Ok{};
    return Error{"privileged_port",
                 "port " + std::to_string(port) +
                     " is below 1024, where system services listen (ssh on 22); serve models on "
                     "a port of 1024 or above, or set supervisor.allow_privileged_ports: true"};
}

std::vector<std::string> naming_violations(const Config& config) {
    // A rule's key is an engine under `engines` or a preset; its preset is what a model runs on.
    const auto preset_of = [&](const std::string& engine) {
        const auto e = config.engines.find(engine);
        return e != config.engines.end() ? e->second.preset.name : engine;
    };
    std::vector<std::string> out;
    const auto& naming = config.supervisor.naming;
    for (const auto& [handle, model] : config.models) {
        const auto preset = preset_of(model.engine);
        // The engine's own rule first, then its preset's.
        auto rule = naming.find(model.engine);
        if (rule == naming.end()) rule = naming.find(preset);
        if (rule != naming.end()) {
            if (!handle.starts_with(rule->second)) {
                out.push_back("model '" + handle + "' runs on " + rule->first +
                              ", whose models' names start with '" + rule->second +
                              "' (supervisor.naming)");
            }
            continue;  // its own rule holds: another's prefix inside it is no matter
        }
        for (const auto& [kind, prefix] : naming) {
            if (preset_of(kind) != preset && handle.starts_with(prefix)) {
                out.push_back("model '" + handle + "' starts with '" + prefix +
                              "', which supervisor.naming gives to " + kind + ", but runs on " +
                              preset);
                break;
            }
        }
    }
    return out;
}

Status check_port_not_reserved(const SupervisorSettings& settings, int port, bool force) {
    if (force || !settings.reserved_ports.contains(port)) return Ok{};
    return Error{"reserved_port", "port " + std::to_string(port) +
                                      " is reserved (supervisor.reserved_ports): choose another "
                                      "port, or pass --force to use it anyway"};
}

std::string ConfigIssue::to_string() const {
    if (line == 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

const ModelSpec* Config::find_model(const std::string& handle) const {
    const auto it = models.find(handle);
    return it == models.end() ? nullptr : &it->second;
}

std::string Config::model_names() const {
    std::string names;
    for (const auto& [name, _] : models)
        names += (names.empty() ? "" : ", ") + name;
    return names;
}

bool Config::loads_on_demand(const ModelSpec& model) const {
    const auto& door = supervisor.front_door;
    return door && !door->ports.empty() && (door->on_demand_all || model.on_demand);
}

const EngineSpec* Config::engine_of(const ModelSpec& model) const {
    const auto it = engines.find(model.engine);
    return it == engines.end() ? nullptr : &it->second;
}

std::optional<std::chrono::milliseconds> parse_duration(const std::string& text) {
    static const std::regex kDuration(R"(^\s*([0-9]{1,9})\s*(ms|s|m|h)?\s*$)");
    std::smatch m;
    if (!std::regex_match(text, m, kDuration)) return std::nullopt;
    const long long n = std::stoll(m[1]);
    const std::string unit = m[2];
    if (unit == "ms") return std::chrono::milliseconds(n);
    if (unit == "m") return std::chrono::minutes(n);
    if (unit == "h") return std::chrono::hours(n);
    return std::chrono::seconds(n);
}

std::string duration_text(std::chrono::milliseconds duration) {
    const auto ms = duration.count();
    return ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
}

std::optional<std::uint64_t> parse_bytes(const std::string& text) {
    static const std::regex kSize(
        R"(^\s*([0-9]{1,19}(?:\.[0-9]{1,9})?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$)");
    std::smatch m;
    if (!std::regex_match(text, m, kSize)) return std::nullopt;
    const double number = std::stod(m[1]);
    const std::string unit = m[2];
    double scale = 1;
    if (unit == "KB")
        scale = 1e3;
    else if (unit == "MB")
        scale = 1e6;
    else if (unit == "GB")
        scale = 1e9;
    else if (unit == "TB")
        scale = 1e12;
    else if (unit == "KiB")
        scale = 1024.0;
    else if (unit == "MiB")
        scale = 1024.0 * 1024;
    else if (unit == "GiB")
        scale = 1024.0 * 1024 * 1024;
    else if (unit == "TiB")
        scale = 1024.0 * 1024 * 1024 * 1024;
    const double bytes = number * scale;
    if (bytes > 1e18) return std::nullopt;
    return static_cast<std::uint64_t>(bytes);
}

Result<std::filesystem::path> run_dir_of(const std::filesystem::path& config_path) {
    try {
        const auto root = YAML::LoadFile(config_path.string());
        if (root.IsMap() && root["supervisor"].IsMap()) {
            const auto dir = root["supervisor"]["run_dir"];
            if (dir && dir.IsScalar()) return config_path.parent_path() / expand_home(dir.Scalar());
        }
    } catch (const YAML::Exception& e) {
        return Error{"config_unreadable",
                     "the config " + config_path.string() + " cannot be read (" + e.what() +
                         "), so where ensembled listens (its run_dir) is unknown; fix the "
                         "config, or name the socket with --socket or ENSEMBLE_SOCKET"};
    }
    return std::filesystem::path(default_run_dir());
}

ConfigLoad load_config(const std::filesystem::path& path, bool check_files) {
    ConfigLoad out;
    Config config;
    config.source = path;
    config.supervisor.state_dir = default_state_dir();
    config.supervisor.run_dir = default_run_dir();
    for (const auto& name : preset_names()) {
        auto builtin = find_preset(name);
        if (!builtin) continue;  // "command" needs a command line of its own
        EngineSpec preset;
        preset.name = name;
        preset.preset = std::move(builtin).value();
        config.engines[name] = preset;
    }
    Loader loader(config, out.issues, check_files);
    loader.load_file(path, true);
    loader.check_references();  // every problem at once, not just the first
    loader.check_chains();
    if (out.issues.empty()) out.config = std::move(config);
    return out;
}

}  // namespace ensemble
