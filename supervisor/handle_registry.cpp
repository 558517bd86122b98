#include "supervisor/handle_registry.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <regex>

#include "protocol/bounded_json.h"

namespace ensemble {

namespace {

constexpr std::string_view kSelectorPrefix = "openai/";

// One line into `out`, without its '\n'; false at the end of the file. A line longer than
// kMaxRegistryLine is read to its end but not kept (`too_long`).
bool next_line(std::istream& in, std::string& out, bool& too_long) {
    out.clear();
    too_long = false;
    bool any = false;
    char c = 0;
    while (in.get(c)) {
        any = true;
        if (c == '\n') return true;
        if (out.size() < kMaxRegistryLine) {
            out += c;
        } else {
            too_long = true;
        }
    }
    return any;
}

// "http://host:8100/v1" -> 8100; 0 when the URL names no port.
int port_of(const std::string& url) {
    static const std::regex kUrl(R"(^https?://(\[[^\]/]+\]|[^/:\[\]]+):([0-9]{1,5})(/.*)?$)");
    std::smatch m;
    if (!std::regex_match(url, m, kUrl)) return 0;
    const int port = std::stoi(m[2].str());
    return port >= 1 && port <= 65535 ? port : 0;
}

std::string where(const std::filesystem::path& file, int line) {
    return file.string() + ":" + std::to_string(line) + ": ";
}

// The entry on one line, or why not.
Result<RegistryEntry> parse_line(const std::string& text, int line) {
    auto parsed = parse_bounded_json(text);
    if (!parsed && parsed.error().code == "too_deep")
        return Error{"bad_line", "refused: " + parsed.error().message};
    if (!parsed) return Error{"bad_line", "not valid JSON; each line is one JSON object"};
    if (!parsed->is_object()) {
        return Error{"bad_line",
                     std::string("a line is one JSON object, not ") + parsed->type_name()};
    }
    RegistryEntry e;
    e.line = line;
    const std::pair<const char*, std::string*> fields[] = {{"handle", &e.handle},
                                                           {"base_model", &e.base_model},
                                                           {"selector", &e.selector},
                                                           {"api_base", &e.api_base}};
    for (const auto& [name, out] : fields) {
        const auto it = parsed->find(name);
        if (it == parsed->end() || !it->is_string() || it->get<std::string>().empty()) {
            return Error{"bad_line", std::string("\"") + name +
                                         "\" is missing or not a non-empty string (a line "
                                         "has handle, base_model, selector and api_base)"};
        }
        *out = it->get<std::string>();
    }
    e.port = port_of(e.api_base);
    if (e.port == 0) {
        return Error{"bad_line", "api_base '" + e.api_base +
                                     "' is not a URL with a port, such as "
                                     "http://127.0.0.1:8100/v1"};
    }
    return e;
}

}  // namespace

RegistryRead read_registry(const std::filesystem::path& file) {
    RegistryRead read;
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        read.problems.push_back({true, file.string() + ": cannot be read (does it exist?)"});
        return read;
    }
    std::map<std::string, int> first_line;  // handle -> line
    std::string text;
    bool too_long = false;
    for (int line = 1; next_line(in, text, too_long); ++line) {
        if (too_long) {
            read.problems.push_back({true, where(file, line) + "longer than " +
                                               std::to_string(kMaxRegistryLine / 1024) +
                                               " KiB, not read; a line is one small JSON object"});
            continue;
        }
        if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank
        if (read.entries.size() == kMaxRegistryEntries) {
            read.problems.push_back({true, where(file, line) + "more than " +
                                               std::to_string(kMaxRegistryEntries) +
                                               " handles; the rest is not read"});
            break;
        }
        auto entry = parse_line(text, line);
        if (!entry) {
            read.problems.push_back({true, where(file, line) + entry.error().message});
            continue;
        }
        const auto [at, fresh] = first_line.emplace(entry->handle, line);
        if (!fresh) {
            read.problems.push_back({true, where(file, line) + "handle '" + entry->handle +
                                               "' is listed again (first at line " +
                                               std::to_string(at->second) +
                                               "); a gateway would route it to one of them only"});
            continue;
        }
        read.entries.push_back(std::move(entry).value());
    }
    return read;
}

std::vector<RegistryFinding> compare_registry(const std::filesystem::path& file,
                                              const std::vector<RegistryEntry>& entries,
                                              const Config& config,
                                              const std::optional<nlohmann::json>& status) {
    std::vector<RegistryFinding> out;
    const auto error = [&](int line, const std::string& text) {
        out.push_back({true, where(file, line) + text});
    };
    // The ports as ensembled serves them: port -> model.
    std::map<int, std::string> served;
    if (status) {
        for (const auto& p : status->value("ports", nlohmann::json::array()))
            served[p.value("port", 0)] = p.value("model", "");
    }
    const auto ports_of = [&](const std::string& model) {
        std::string list;
        for (const auto& [port, m] : served)
            if (m == model) list += (list.empty() ? "" : ", ") + std::to_string(port);
        return list;
    };
    for (const auto& e : entries) {
        const auto* model = config.find_model(e.base_model);
        const auto name = "'" + e.handle + "'";
        if (model == nullptr) {
            error(e.line, name + ": base model '" + e.base_model +
                              "' is not a model of the config " + config.source.string());
            continue;
        }
        if (!e.selector.starts_with(kSelectorPrefix)) {
            error(e.line, name + ": selector '" + e.selector +
                              "' does not start with openai/ (Ensemble's ports speak the OpenAI "
                              "API: LiteLLM's openai/ provider)");
        } else {
            const auto asked = e.selector.substr(kSelectorPrefix.size());
            const auto& aliases = model->aliases;
            const bool answered = asked == e.base_model || model->accept_any_model ||
                                  std::find(aliases.begin(), aliases.end(), asked) != aliases.end();
            if (!answered) {
                error(e.line, name + ": selector '" + e.selector + "' asks for '" + asked +
                                  "', which the port serving '" + e.base_model +
                                  "' does not answer to (404); use openai/" + e.base_model);
            }
        }
        if (!status) continue;
        const auto at = served.find(e.port);
        const auto elsewhere = ports_of(e.base_model);
        if (at != served.end() && at->second == e.base_model) continue;
        if (at != served.end()) {
            error(
                e.line,
                name + " goes to port " + std::to_string(e.port) + " (api_base), which serves '" +
                    at->second + "', not '" + e.base_model + "'" +
                    (elsewhere.empty() ? "" : "; '" + e.base_model + "' is on port " + elsewhere));
        } else if (!elsewhere.empty()) {
            error(e.line, name + " goes to port " + std::to_string(e.port) +
                              " (api_base), where nothing is served; '" + e.base_model +
                              "' is on port " + elsewhere);
        } else {
            out.push_back({false, where(file, e.line) + name + ": '" + e.base_model +
                                      "' is not served now (nothing on port " +
                                      std::to_string(e.port) + ")"});
        }
    }
    if (status) {
        for (const auto& [port, model] : served) {
            const bool routed = std::any_of(entries.begin(), entries.end(), [&](const auto& e) {
                return e.port == port && e.base_model == model;
            });
            if (!routed) {
                out.push_back({true, file.string() + ": missing: '" + model +
                                         "' is served on port " + std::to_string(port) +
                                         ", but no line routes to it ('ensemble export handles' "
                                         "prints the lines of what runs)"});
            }
        }
    } else {
        for (const auto& [handle, _] : config.models) {
            const bool listed = std::any_of(entries.begin(), entries.end(),
                                            [&](const auto& e) { return e.base_model == handle; });
            if (!listed) {
                out.push_back({false, file.string() + ": model '" + handle +
                                          "' of the config has no handle here"});
            }
        }
    }
    return out;
}

std::vector<nlohmann::json> registry_lines(const nlohmann::json& status, const std::string& host) {
    const auto url_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    std::vector<nlohmann::json> lines;
    for (const auto& p : status.at("ports")) {
        const auto model = p.value("model", "");
        const auto port = p.value("port", 0);
        std::vector<std::string> handles{model};
        for (const auto& alias : p.value("aliases", nlohmann::json::array()))
            handles.push_back(alias.get<std::string>());
        for (const auto& handle : handles) {
            nlohmann::json line = {
                {"handle", handle},
                {"base_model", model},
                {"selector", std::string(kSelectorPrefix) + model},
                {"api_base", "http://" + url_host + ":" + std::to_string(port) + "/v1"},
                {"port", port},
                {"engine", p.value("engine", "")},
                {"state", p.value("state", "")}};
            if (p.contains("upstream")) line["upstream"] = p["upstream"].value("model", "");
            lines.push_back(std::move(line));
        }
    }
    return lines;
}

}  // namespace ensemble
