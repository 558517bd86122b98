// handles.jsonl, the registry a gateway (LiteLLM) routes by: one JSON object per line,
//   {"handle": "coder", "base_model": "qwen-coder", "selector": "openai/qwen-coder",
//    "api_base": "http://studio:8100/v1"}
// — the name the gateway's clients use, the model of the config that serves it, what the gateway
// sends as `model` (LiteLLM's `openai/` provider, then a name the port answers to), and the URL
// of the port. Other members are kept for people and not checked. `ensemble export handles`
// writes it; `ensemble check --registry` compares one with the config and the live ports.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "profiles/config.h"

namespace ensemble {

// Text that came from a file (or names one), fit for a terminal: at most 200 characters;
// control characters (C0, DEL, C1) and bytes that are not well-formed UTF-8 as '?'.
std::string printable(std::string_view text);

struct RegistryEntry {
    int line = 0;  // 1-based, in the file it was read from
    std::string handle;
    std::string base_model;
    std::string selector;
    std::string api_base;
    int port = 0;  // from api_base
};

// A registry line is one small object: longer lines are refused unread. At most this many
// lines are read, and at most 16 MiB; a regular file only.
inline constexpr std::size_t kMaxRegistryLine = 64 * 1024;
inline constexpr std::size_t kMaxRegistryEntries = 10000;

struct RegistryFinding {
    bool error = true;  // else a warning
    std::string text;   // "FILE:LINE: ..." where it has a line
};

struct RegistryRead {
    std::vector<RegistryEntry> entries;
    std::vector<RegistryFinding> problems;  // malformed lines, duplicates: all errors
    bool readable = true;  // false: the file itself was refused (nothing to compare)
};

// Reads and validates the lines (bounded: kMaxRegistryLine, kMaxRegistryEntries); a bad line
// is reported with its position and skipped, so every problem is said at once (the first 100).
// What came from the file is echoed without control bytes, cut at 200 characters.
RegistryRead read_registry(const std::filesystem::path& file);

// The entries against the config (every base model defined, every selector a name its model
// answers to) and, when ensembled answered, its status reply: each served model reachable
// through some handle at its port (missing), each handle's api_base port serving its base
// model (mismatched), handles of models not served now (warnings).
std::vector<RegistryFinding> compare_registry(const std::filesystem::path& file,
                                              const std::vector<RegistryEntry>& entries,
                                              const Config& config,
                                              const std::optional<nlohmann::json>& status);

// The registry entries the live ports give: each model's handle and each alias, on host.
std::vector<nlohmann::json> registry_lines(const nlohmann::json& status, const std::string& host);

}  // namespace ensemble
