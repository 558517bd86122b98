#include "supervisor/handle_registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "protocol/bounded_json.h"

namespace ensemble {

namespace {

// The length of the well-formed UTF-8 sequence at the start of `text` (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0.
std::size_t utf8_length(std::string_view text) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const auto c = byte(0);
    if (c < 0x80) return 1;
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xbf;  // the second byte's range
    if (c >= 0xc2 && c <= 0xdf) {
        length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        length = 3;
        if (c == 0xe0) low = 0xa0;
        if (c == 0xed) high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        length = 4;
        if (c == 0xf0) low = 0x90;
        if (c == 0xf4) high = 0x8f;
    } else {
        return 0;
    }
    if (text.size() < length || byte(1) < low || byte(1) > high) return 0;
    for (std::size_t k = 2; k < length; ++k)
        if ((byte(k) & 0xc0) != 0x80) return 0;
    return length;
}

}  // namespace

std::string printable(std::string_view text) {
    std::string out;
    const auto shown = text.substr(0, 200);
    for (std::size_t i = 0; i < shown.size();) {
        const auto c = static_cast<unsigned char>(shown[i]);
        const auto length = utf8_length(shown.substr(i));
        const bool c1 = length == 2 && c == 0xc2 && static_cast<unsigned char>(shown[i + 1]) < 0xa0;
        if (length == 0 || c1 || c < 0x20 || c == 0x7f) {
            out += '?';
            i += length == 0 ? 1 : length;
        } else {
            out.append(shown.substr(i, length));
            i += length;
        }
    }
    if (text.size() > 200) out += "...";
    return out;
}

namespace {

constexpr std::string_view kSelectorPrefix = "openai/";
constexpr std::size_t kMaxRegistryField = 2048;         // a handle, a model, a selector, a URL
constexpr std::size_t kMaxRegistryBytes = 16ULL << 20;  // 10,000 handles are a few MB
constexpr std::size_t kMaxProblems = 100;               // then "... and more"

// The next line of `rest` (without its '\n'), taken off it; a line longer than
// kMaxRegistryLine is passed over but not kept (`too_long`).
std::string_view next_line(std::string_view& rest, bool& too_long) {
    const auto end = rest.find('\n');
    const auto line = rest.substr(0, end);
    rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
    too_long = line.size() > kMaxRegistryLine;
    return too_long ? std::string_view() : line;
}

// The whole file, or why not. Opened without waiting (a FIFO swapped in after the check), read
// only as far as its size says: a kernel file that reports 0 bytes (/proc/kmsg, which would
// block and consume the kernel's messages) reads as empty.
Result<std::string> read_whole(const std::filesystem::path& file) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return Error{"unreadable", std::string("cannot be read: ") + std::strerror(errno)};
    struct stat st {};
    std::string text;
    std::string why;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        why = "is not a regular file";
    } else if (static_cast<std::uint64_t>(st.st_size) > kMaxRegistryBytes) {
        why = "is larger than " + std::to_string(kMaxRegistryBytes >> 20) +
              " MiB; a registry of 10,000 handles takes a few MB";
    } else {
        text.resize(static_cast<std::size_t>(st.st_size));
        std::size_t got = 0;
        while (got < text.size()) {
            const auto n = ::read(fd, text.data() + got, text.size() - got);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                why = std::string("cannot be read: ") + std::strerror(errno);
                break;
            }
            if (n == 0) break;  // shrank while it was read
            got += static_cast<std::size_t>(n);
        }
        text.resize(got);
    }
    ::close(fd);
    if (!why.empty()) return Error{"unreadable", why};
    return text;
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
    return printable(file.string()) + ":" + std::to_string(line) + ": ";
}

// The entry on one line, or why not.
Result<RegistryEntry> parse_line(std::string_view text, int line) {
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
        read.problems.push_back({true, printable(file.string()) + ": " + why});
        read.readable = false;
        return read;
    };
    // Checked before it is opened: a FIFO would block the open, /dev/zero never end.
    std::error_code ec;
    const auto status = std::filesystem::status(file, ec);
    if (ec || !std::filesystem::exists(status)) return refuse("cannot be read (does it exist?)");
    if (std::filesystem::is_directory(status)) return refuse("is a directory, not a registry");
    if (!std::filesystem::is_regular_file(status)) return refuse("is not a regular file");
    auto whole = read_whole(file);
    if (!whole) return refuse(whole.error().message);
    const auto problem = [&](int line, const std::string& why) {
        if (read.problems.size() < kMaxProblems) {
            read.problems.push_back({true, where(file, line) + why});
        } else if (read.problems.size() == kMaxProblems) {
            read.problems.push_back({true, printable(file.string()) + ": more problems from line " +
                                               std::to_string(line) +
                                               " on are not listed; fix these first"});
        }
    };
    std::map<std::string, int> first_line;  // handle -> line
    std::string_view rest = *whole;
    bool too_long = false;
    std::size_t lines = 0;  // not blank
    for (int line = 1; !rest.empty(); ++line) {
        const auto text = next_line(rest, too_long);
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
                out.push_back({true, printable(file.string()) + ": missing: '" + model +
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
                out.push_back({false, printable(file.string()) + ": model '" + handle +
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
