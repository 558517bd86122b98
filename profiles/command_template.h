// Engine command templates: an argv whose words may hold {model} {port} {socket} {context}
// {parallel} {handle} placeholders, expanded by the worker when it starts an engine; a chained
// model's also {upstream_url} (http://127.0.0.1:PORT/v1 of the port serving its upstream) and
// {upstream_handle}.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"

namespace ensemble {

using TemplateVars = std::map<std::string, std::string, std::less<>>;

// The placeholders a template may use; anything else in braces is an error, so a typo such as
// {modle} is caught when the config is checked, not when the engine fails to start.
const std::vector<std::string>& known_placeholders();

// Replaces every {name} in `word`. "{{" and "}}" stand for literal braces.
Result<std::string> expand_word(std::string_view word, const TemplateVars& vars);

Result<std::vector<std::string>> expand_argv(const std::vector<std::string>& argv,
                                             const TemplateVars& vars);

// Splits a command line into words the way a POSIX shell would for plain words, 'single' and
// "double" quotes and backslash escapes; no variables, globs or operators.
Result<std::vector<std::string>> split_command_line(std::string_view line);

}  // namespace ensemble
