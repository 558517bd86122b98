#include "worker/worker_options.h"

#include <gtest/gtest.h>

#include <string>
#include <variant>
#include <vector>

using namespace ensemble;

namespace {

std::variant<FrontDoorOptions, int> parse_front_door(std::vector<std::string> args) {
    args.insert(args.begin(), {"ensemble-worker", "--front-door", "--port", "8099"});
    std::vector<char*> argv;
    for (auto& arg : args)
        argv.push_back(arg.data());
    return parse_front_door_options(static_cast<int>(argv.size()), argv.data());
}

}  // namespace

// ensembled passes health.drain_timeout as seconds with a fraction ("1.001000"): read back to
// the millisecond (truncating 1.001 * 1000 gave 1000), and never a number that is none.
TEST(WorkerOptions, TheDrainTimeoutIsReadToTheMillisecondAndMustBeANumberOfSeconds) {
    const auto parsed = parse_front_door({"--drain-timeout", "1.001000"});
    ASSERT_TRUE(std::holds_alternative<FrontDoorOptions>(parsed));
    EXPECT_EQ(std::get<FrontDoorOptions>(parsed).drain_timeout, std::chrono::milliseconds(1001));
    for (const char* refused : {"nan", "-1", "inf", "700000"}) {
        EXPECT_TRUE(std::holds_alternative<int>(parse_front_door({"--drain-timeout", refused})))
            << refused;
    }
}
