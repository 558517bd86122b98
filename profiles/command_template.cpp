#include "profiles/command_template.h"

#include <algorithm>

namespace ensemble {

const std::vector<std::string>& known_placeholders() {
    static const std::vector<std::string> names{"model",        "port",           "socket",
                                                "context",      "parallel",       "handle",
                                                "upstream_url", "upstream_handle"};
    return names;
}

namespace {

Error template_error(std::string_view word, std::string why) {
    return Error{"bad_template",
                 "engine command word '" + std::string(word) + "': " + std::move(why)};
}

std::string placeholder_list() {
    std::string list;
    for (const auto& name : known_placeholders())
        list += (list.empty() ? "{" : ", {") + name + "}";
    return list;
}

}  // namespace

Result<std::string> expand_word(std::string_view word, const TemplateVars& vars) {
    std::string out;
    out.reserve(word.size());
    for (std::size_t i = 0; i < word.size(); ++i) {
        const char c = word[i];
        const bool doubled = i + 1 < word.size() && word[i + 1] == c;
        if ((c == '{' || c == '}') && doubled) {
            out += c;
            ++i;
            continue;
        }
        if (c == '}') return template_error(word, "unmatched '}' (write '}}' for a literal brace)");
        if (c != '{') {
            out += c;
            continue;
        }
        const auto close = word.find('}', i + 1);
        if (close == std::string_view::npos) {
            return template_error(word, "unclosed '{' (write '{{' for a literal brace)");
        }
        const auto name = word.substr(i + 1, close - i - 1);
        const auto& known = known_placeholders();
        if (std::find(known.begin(), known.end(), name) == known.end()) {
            return template_error(word, "unknown placeholder {" + std::string(name) +
                                            "}; the known ones are " + placeholder_list());
        }
        const auto value = vars.find(name);
        if (value == vars.end()) {
            return template_error(word, "no value for {" + std::string(name) + "}");
        }
        out += value->second;
        i = close;
    }
    return out;
}

Result<std::vector<std::string>> expand_argv(const std::vector<std::string>& argv,
                                             const TemplateVars& vars) {
    std::vector<std::string> out;
    out.reserve(argv.size());
    for (const auto& word : argv) {
        auto expanded = expand_word(word, vars);
        if (!expanded) return expanded.error();
        out.push_back(std::move(expanded).value());
    }
    return out;
}

Result<std::vector<std::string>> split_command_line(std::string_view line) {
    std::vector<std::string> words;
    std::string word;
    bool in_word = false;
    char quote = 0;
    for (std::size_t i = 0; i < line.size(); ++i) {
        const char c = line[i];
        if (quote == '\'') {
            if (c == '\'')
                quote = 0;
            else
                word += c;
            continue;
        }
        if (c == '\\') {
            if (i + 1 == line.size()) {
                return Error{"bad_command",
                             "command ends with a lone backslash: " + std::string(line)};
            }
            word += line[++i];
            in_word = true;
            continue;
        }
        if (quote == '"') {
            if (c == '"')
                quote = 0;
            else
                word += c;
            continue;
        }
        if (c == '\'' || c == '"') {
            quote = c;
            in_word = true;
        } else if (c == ' ' || c == '\t' || c == '\n') {
            if (in_word) words.push_back(std::move(word));
            word.clear();
            in_word = false;
        } else {
            word += c;
            in_word = true;
        }
    }
    if (quote != 0) {
        return Error{"bad_command", std::string("unterminated ") + quote +
                                        " quote in command: " + std::string(line)};
    }
    if (in_word) words.push_back(std::move(word));
    if (words.empty()) return Error{"bad_command", "the engine command is empty"};
    return words;
}

}  // namespace ensemble
