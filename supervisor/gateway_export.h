// `ensemble export`: the current assignments in the shapes a gateway in front of one or several
// machines reads — a LiteLLM model_list, or a JSON-lines registry of handles. Built from the
// status reply, so it needs nothing the CLI cannot already see.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace ensemble {

// The host a gateway should use to reach this machine's ports: `override_host` if given, else
// the config's bind_host, with a wildcard bind (0.0.0.0, ::) replaced by this machine's name.
std::string export_host(const std::string& bind_host, const std::string& override_host);

// model_list:
//   - model_name: HANDLE
//     litellm_params: {model: openai/BASE-MODEL, api_base: http://HOST:PORT/v1, api_key: none}
// With `aliases`, each alias gets an entry of its own routed to the same port. The entries are
// handles.jsonl's (handle_registry.h).
std::string litellm_model_list(const nlohmann::json& status, const std::string& host, bool aliases);

// handles.jsonl (handle_registry.h): one line per model and per alias, as `check --registry`
// reads it, with port, engine and state (and a chained model's upstream) for people.
std::string handles_jsonl(const nlohmann::json& status, const std::string& host);

}  // namespace ensemble
