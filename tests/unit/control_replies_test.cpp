// Every control verb's reply, success and refusal, as the wire carries it, against a golden
// file: the JSON an operator's scripts (and the CLI) read must not change by accident.
// ENSEMBLE_UPDATE_GOLDEN=1 rewrites tests/unit/golden/control_replies.json; review its diff.
#include <cstdlib>
#include <regex>

#include "tests/support/fleet_harness.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

const std::filesystem::path kGolden =
    std::filesystem::path(ENSEMBLE_SOURCE_DIR) / "tests/unit/golden/control_replies.json";

// What differs between runs and machines, made constant: the test's folder, wall-clock times,
// random worker ids, the machine's memory.
json normalized(const json& j, const std::string& dir) {
    if (j.is_object()) {
        json out = json::object();
        for (const auto& [key, value] : j.items()) {
            if (key == "at_ms") {
                out[key] = "<time>";
            } else if (key == "physical_bytes" || key == "budgetable_bytes") {
                out[key] = "<machine>";
            } else {
                out[key] = normalized(value, dir);
            }
        }
        return out;
    }
    if (j.is_array()) {
        json out = json::array();
        for (const auto& value : j)
            out.push_back(normalized(value, dir));
        return out;
    }
    if (j.is_string()) {
        static const std::regex worker_id("(w[0-9]+)-[0-9a-f]{8}");
        auto text = j.get<std::string>();
        for (auto at = text.find(dir); at != std::string::npos; at = text.find(dir))
            text.replace(at, dir.size(), "<dir>");
        return std::regex_replace(text, worker_id, "$1-<id>");
    }
    return j;
}

class ControlRepliesTest : public FleetFixture {
  protected:
    void reply(const std::string& name, const json& j) {
        replies_[name] = normalized(j, dir_.string());
    }
    json replies_ = json::object();
};

TEST_F(ControlRepliesTest, EveryVerbAnswersAsTheGoldenFileSays) {
    using protocol::Verb;
    start("  memory_budget: 10GiB\n",
          "  big: {engine: fake, path: none, memory: 9GiB, aliases: [big-latest]}\n",
          "  half: {8100: a, 8102: dead}\n  heavy: {8100: big, 8101: b}\n");
    reply("profile_list", command(Verb::profile_list));
    reply("load", command(Verb::load, kA, "a"));
    reply("load_same_again", command(Verb::load, kA, "a"));
    reply("load_busy_port", command(Verb::load, kA, "b"));
    reply("load_unknown_model", command(Verb::load, kC, "nope"));
    reply("load_over_budget", command(Verb::load, kC, "big"));
    reply("profile_load", command(Verb::profile_load, 0, "", "pair"));
    reply("profile_load_unknown", command(Verb::profile_load, 0, "", "nope"));
    reply("profile_load_over_budget", command(Verb::profile_load, 0, "", "heavy"));
    reply("swap_failed_beside", command(Verb::swap, kB, "dead"));
    reply("swap_nothing_there", command(Verb::swap, kD, "a"));
    reply("swap", command(Verb::swap, kB, "a"));
    advance(3s);
    reply("status", command(Verb::status));
    reply("budget", command(Verb::budget));
    reply("restart", command(Verb::restart, kA));
    reply("restart_nothing_there", command(Verb::restart, kD));
    reply("logs_none", command(Verb::logs, kA));
    reply("reload", command(Verb::reload));
    reply("unload", command(Verb::unload, kB));
    reply("unload_nothing_there", command(Verb::unload, kB));
    reply("profile_load_incomplete", command(Verb::profile_load, 0, "", "half"));
    reply("profile_unload", command(Verb::profile_unload));
    reply("events", command(Verb::events));

    if (std::getenv("ENSEMBLE_UPDATE_GOLDEN") != nullptr) {
        std::filesystem::create_directories(kGolden.parent_path());
        std::ofstream(kGolden) << replies_.dump(2) << "\n";
        GTEST_SKIP() << "rewrote " << kGolden;
    }
    std::ifstream in(kGolden);
    ASSERT_TRUE(in) << kGolden << " is missing: run with ENSEMBLE_UPDATE_GOLDEN=1";
    const auto golden = json::parse(in);
    for (const auto& [name, expected] : golden.items()) {
        ASSERT_TRUE(replies_.contains(name)) << name;
        EXPECT_EQ(replies_[name].dump(2), expected.dump(2)) << name;
    }
    EXPECT_EQ(replies_.size(), golden.size());
}

}  // namespace
