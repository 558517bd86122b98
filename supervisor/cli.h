// The `ensemble` CLI, one file per concern: ensemble_cli.cpp parses the command line and sends
// control verbs (their subcommands come from protocol/control_verbs.h); cli_print.cpp prints
// replies for people; cli_progress.cpp draws load progress while a command waits;
// cli_offline.cpp runs what needs no supervisor (check, estimate, wired-limit). The CLI links the
// client library (control_client, gateway_export) and the memory policy, never the daemon's or the
// worker's core.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "profiles/memory_estimate.h"
#include "protocol/control_verbs.h"
#include "protocol/messages.h"

namespace ensemble::cli {

// "1.5 GiB", or "-" for 0 (unknown).
std::string human_bytes(std::uint64_t bytes);

// A reply's result, for people.
void print_human(protocol::Verb verb, const nlohmann::json& result);
void print_events(const nlohmann::json& events);

// Sends `request` (a verb that starts workers) and, until its reply comes, draws the load of
// each port it moves from `status` every half second: bars on a terminal, plain lines when
// stderr is not one.
Result<nlohmann::json> call_with_progress(const std::filesystem::path& socket,
                                          const protocol::ControlRequest& request);

// `ensemble check FILE`: validates a config and each profile's footprint against the budget;
// with a `registry` (handles.jsonl), that too (handle_registry.h).
int check(const std::string& file, const std::string& registry);
// `ensemble estimate PATH`: the memory budget's estimate of a model file, runs nothing.
int estimate(const EstimateRequest& request);
// `ensemble wired-limit`: the GPU wired limit now and in the config; `apply` sets it (macOS).
int wired_limit(const std::string& config_path, bool apply, bool print_mb);
// `ensemble logs -f`: prints what is appended to `path`, like tail -f.
[[noreturn]] void follow(const std::string& path);

}  // namespace ensemble::cli
