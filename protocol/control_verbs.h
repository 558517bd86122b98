// The verbs of control.sock, in one table: their wire names, the fields each needs, the CLI
// words that send them and the help the CLI shows. The supervisor dispatches on the enum with a
// switch the compiler checks for completeness; the CLI builds its subcommands from the table.
#pragma once

#include <array>
#include <optional>
#include <string_view>

namespace ensemble::protocol {

enum class Verb {
    status,
    load,
    unload,
    swap,
    restart,
    profile_list,
    profile_load,
    profile_unload,
    logs,
    events,
    reload,
    budget,
};

struct VerbInfo {
    Verb verb;
    std::string_view name;        // on the wire: "profile-load"
    std::string_view group;       // the CLI's parent subcommand ("profile"), or ""
    std::string_view subcommand;  // the CLI's word under it ("load")
    bool needs_port;
    bool needs_model;
    bool needs_profile;
    bool takes_lines;        // -n/--lines (and --follow)
    bool changes_the_fleet;  // run one at a time, in arrival order
    // Starts workers and waits until they are ready: the CLI draws their load progress, and
    // with --no-wait ("wait": false) the reply comes once the command is accepted.
    bool starts_workers;
    std::string_view help;
};

inline constexpr std::array<VerbInfo, 12> kVerbs{{
    {Verb::status, "status", "", "status", false, false, false, false, false, false,
     "every port: model, state, pid, uptime, restarts, memory"},
    {Verb::load, "load", "", "load", true, true, false, false, true, true, "serve MODEL on PORT"},
    {Verb::unload, "unload", "", "unload", true, false, false, false, true, false,
     "stop serving on PORT"},
    {Verb::swap, "swap", "", "swap", true, true, false, false, true, true,
     "replace PORT's model; the old one comes back if the new fails"},
    {Verb::restart, "restart", "", "restart", true, false, false, false, true, true,
     "restart PORT's worker (also clears a crash-loop 'failed')"},
    {Verb::profile_list, "profile-list", "profile", "list", false, false, false, false, false,
     false, "the config's profiles; * marks the active one"},
    {Verb::profile_load, "profile-load", "profile", "load", false, false, true, false, true, true,
     "make the profile's ports serve its models (all or nothing)"},
    {Verb::profile_unload, "profile-unload", "profile", "unload", false, false, false, false, true,
     false, "stop the named profile's ports, or every port"},
    {Verb::logs, "logs", "", "logs", true, false, false, true, false, false, "PORT's engine log"},
    {Verb::events, "events", "", "events", false, false, false, true, false, false,
     "the event log: every state change with its reason"},
    {Verb::reload, "reload", "", "reload", false, false, false, false, true, false,
     "re-read the config; report ports whose running worker would now start differently"},
    {Verb::budget, "budget", "", "budget", false, false, false, false, false, false,
     "the memory budget: reserved, measured, free, and each port's share"},
}};

// The table's entry for `verb` (every verb has one: checked at compile time below).
constexpr const VerbInfo& info(Verb verb) {
    for (const auto& v : kVerbs) {
        if (v.verb == verb) return v;
    }
    return kVerbs.front();  // unreachable: kVerbsCoverEveryVerb
}

constexpr std::optional<Verb> verb_named(std::string_view name) {
    for (const auto& v : kVerbs) {
        if (v.name == name) return v.verb;
    }
    return std::nullopt;
}

// The table lists each verb once, in the enum's order.
constexpr bool kVerbsCoverEveryVerb = [] {
    for (std::size_t i = 0; i < kVerbs.size(); ++i) {
        if (static_cast<std::size_t>(kVerbs[i].verb) != i) return false;
    }
    return true;
}();
static_assert(kVerbsCoverEveryVerb, "kVerbs must list every Verb once, in order");

}  // namespace ensemble::protocol
