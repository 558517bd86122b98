#include "supervisor/handle_registry.h"

#include <algorithm>
#include <fstream>
#include <map>

#include "protocol/bounded_json.h"

namespace ensemble {

namespace {

constexpr std::string_view kSelectorPrefix = "openai/";
constexpr std::size_t kMaxRegistryField = 2048;         // a handle, a model, a selector, a URL
constexpr std::size_t kMaxRegistryBytes = 16ULL << 20;  // 10,000 handles are a few MB
constexpr std::size_t kMaxProblems = 100;               // then "... and more"

// What came from the file, fit for a terminal: control bytes as '?', at most 200 characters.
std::string printable(std::string_view text) {
    std::string out;
    for (const char c : text.substr(0, 200))
        out += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
    if (text.size() > 200) out += "...";
    return out;
}

// One line into `out`, without its '\n'; false at the end of the file or of `budget` bytes
// (which counts down). A line longer than kMaxRegistryLine is read to its end but not kept
// (`too_long`).
bool next_line(std::istream& in, std::string& out, bool& too_long, std::size_t& budget) {
    out.clear();
    too_long = false;
    bool any = false;
    char c = 0;
    while (budget > 0 && in.get(c)) {
        --budget;
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

// The port of "http://HOST:PORT/v1" (https too; HOST a name, an IPv4 or a [IPv6] literal), or
// why the URL is not one.
Result<int> port_of(std::string_view url) {
    const auto bad = [&](const std::string& why) {
        return Error{"bad_api_base",
                     "api_base '" + printable(url) + "' " + why + "; write http://HOST:PORT/v1"};
    };
    if (url.size() > kMaxRegistryField) return bad("is too long");
    for (const std::string_view scheme : {"http://", "https://"}) {
        if (!url.starts_with(scheme)) continue;
        auto rest = url.substr(scheme.size());
        const auto host_end = rest.starts_with('[') ? rest.find("]:") + 1 : rest.find(':');
        if (host_end == 0 || host_end == std::string_view::npos || host_end >= rest.size())
            return bad("names no port");
        rest = rest.substr(host_end + 1);
        const auto digits = rest.find_first_not_of("0123456789");
        const auto number = rest.substr(0, digits);
        const auto path =
            digits == std::string_view::npos ? std::string_view() : rest.substr(digits);
        int port = 0;
        for (const char d : number.substr(0, 6))
            port = port * 10 + (d - '0');
        if (number.empty() || number.size() > 5 || port < 1 || port > 65535)
            return bad("names no port from 1 to 65535");
        if (path != "/v1" && path != "/v1/")
            return bad("does not end in /v1, where a port serves the OpenAI API");
        return port;
    }
    return bad("is not an http:// URL");
}

std::string where(const std::filesystem::path& file, int line) {
    return file.string() + ":" + std::to_string(line) + ": ";
}

// The entry on one line, or why not.
Result<RegistryEntry> parse_line(const std::string& text, int line) {
    auto parsed = parse_bounded_json(text);
    if (!parsed && parsed.error().code == "too_deep")
        return Error{"bad_line", "refused: " + parsed.error().message};
    if (!parsed || text.find('\0') != std::string::npos)
        return Error{"bad_line", "not valid JSON (or not UTF-8); each line is one JSON object"};
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
        if (out->size() > kMaxRegistryField) {
            return Error{"bad_line", std::string("\"") + name + "\" is longer than " +
                                         std::to_string(kMaxRegistryField) + " bytes"};
        }
    }
    auto port = port_of(e.api_base);
    if (!port) return Error{"bad_line", port.error().message};
    e.port = *port;
    return e;
}

}  // namespace

RegistryRead read_registry(const std::filesystem::path& file) {
    RegistryRead read;
    const auto refuse = [&](const std::string& why) {
        read.problems.push_back({true, file.string() + ": " + why});
        read.readable = false;
        return read;
    };
    // Checked before it is opened: a FIFO would block the open, /dev/zero never end.
    std::error_code ec;
    const auto status = std::filesystem::status(file, ec);
    if (ec || !std::filesystem::exists(status)) return refuse("cannot be read (does it exist?)");
    if (std::filesystem::is_directory(status)) return refuse("is a directory, not a registry");
    if (!std::filesystem::is_regular_file(status)) return refuse("is not a regular file");
    if (std::filesystem::file_size(file, ec) > kMaxRegistryBytes) {
        return refuse("is larger than " + std::to_string(kMaxRegistryBytes >> 20) +
                      " MiB; a registry of 10,000 handles takes a few MB");
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) return refuse("cannot be read (permissions?)");
    const auto problem = [&](int line, const std::string& why) {
        if (read.problems.size() < kMaxProblems) {
            read.problems.push_back({true, where(file, line) + why});
        } else if (read.problems.size() == kMaxProblems) {
            read.problems.push_back({true, file.string() + ": more problems after line " +
                                               std::to_string(line) +
                                               " are not listed; fix these first"});
        }
    };
    std::map<std::string, int> first_line;  // handle -> line
    std::string text;
    bool too_long = false;
    std::size_t budget = kMaxRegistryBytes;  // the file may grow while it is read
    std::size_t lines = 0;                   // not blank
    for (int line = 1; next_line(in, text, too_long, budget); ++line) {
        if (!too_long && text.find_first_not_of(" \t\r") == std::string::npos) continue;
        if (++lines > kMaxRegistryEntries) {
            problem(line, "more than " + std::to_string(kMaxRegistryEntries) +
                              " lines; the rest is not read");
            break;
        }
        if (too_long) {
            problem(line, "longer than " + std::to_string(kMaxRegistryLine / 1024) +
                              " KiB, not read; a line is one small JSON object");
            continue;
        }
        auto entry = parse_line(text, line);
        if (!entry) {
            problem(line, entry.error().message);
            continue;
        }
        const auto [at, fresh] = first_line.emplace(entry->handle, line);
        if (!fresh) {
            problem(line, "handle '" + printable(entry->handle) +
                              "' is listed again (first at line " + std::to_string(at->second) +
                              "); a gateway would route it to one of them only");
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
        const auto name = "'" + printable(e.handle) + "'";
        const auto base = printable(e.base_model);
        if (model == nullptr) {
            error(e.line, name + ": base model '" + base + "' is not a model of the config " +
                              config.source.string());
            continue;
        }
        if (!e.selector.starts_with(kSelectorPrefix)) {
            error(e.line, name + ": selector '" + printable(e.selector) +
                              "' does not start with openai/ (Ensemble's ports speak the OpenAI "
                              "API: LiteLLM's openai/ provider)");
        } else {
            const auto asked = e.selector.substr(kSelectorPrefix.size());
            const auto& aliases = model->aliases;
            const bool answered = asked == e.base_model || model->accept_any_model ||
                                  std::find(aliases.begin(), aliases.end(), asked) != aliases.end();
            if (!answered) {
                error(e.line, name + ": selector '" + printable(e.selector) + "' asks for '" +
                                  printable(asked) + "', which the port serving '" + base +
                                  "' does not answer to (404); use openai/" + base);
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
                              " (api_base), where nothing is served; '" + base + "' is on port " +
                              elsewhere);
        } else {
            out.push_back({false, where(file, e.line) + name + ": '" + base +
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
