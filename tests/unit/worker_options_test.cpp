#include "worker/worker_options.h"

#include "protocol/port_limits.h"

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

std::variant<WorkerOptions, int> parse_worker(std::vector<std::string> args) {
    args.insert(args.begin(),
                {"ensemble-worker", "--port", "8100", "--model", "/m.gguf", "--handle", "m",
                 "--engine", "command", "--command", "true {model} {port}"});
    std::vector<char*> argv;
    for (auto& arg : args)
        argv.push_back(arg.data());
    return parse_worker_options(static_cast<int>(argv.size()), argv.data());
}

}  // namespace

// supervisor.port_limits reaches both kinds of port as the same options (protocol/port_limits.h),
// each held to the range the config is: its least and most taken, one past either refused.
TEST(WorkerOptions, BothKindsOfPortTakeEveryPortLimitWithinTheConfigsRanges) {
    std::vector<std::string> at_least;
    std::vector<std::string> at_most;
    for (const auto* limit : protocol::kPortLimits) {
        at_least.insert(at_least.end(), {std::string(limit->option), std::to_string(limit->least)});
        at_most.insert(at_most.end(), {std::string(limit->option), std::to_string(limit->most)});
        for (const auto outside : {limit->least - 1, limit->most + 1}) {
            const std::vector<std::string> refused{std::string(limit->option),
                                                   std::to_string(outside)};
            EXPECT_TRUE(std::holds_alternative<int>(parse_worker(refused)))
                << refused[0] << " " << refused[1];
            EXPECT_TRUE(std::holds_alternative<int>(parse_front_door(refused)))
                << refused[0] << " " << refused[1];
        }
    }
    const auto expect_limits = [](const ListenerConfig& limits, bool least) {
        const auto& pick = [least](const protocol::PortLimit& limit) {
            return least ? limit.least : limit.most;
        };
        EXPECT_EQ(limits.max_body_bytes, pick(protocol::kMaxBodyBytes));
        EXPECT_EQ(limits.max_connections, pick(protocol::kMaxConnections));
        EXPECT_EQ(limits.idle_timeout.count(), pick(protocol::kIdleTimeout));
        EXPECT_EQ(limits.header_timeout.count(), pick(protocol::kHeaderTimeout));
        EXPECT_EQ(limits.send_timeout.count(), pick(protocol::kSendTimeout));
    };
    for (const bool least : {true, false}) {
        const auto& args = least ? at_least : at_most;
        const auto worker = parse_worker(args);
        ASSERT_TRUE(std::holds_alternative<WorkerOptions>(worker));
        expect_limits(std::get<WorkerOptions>(worker).front, least);
        EXPECT_EQ(std::get<WorkerOptions>(worker).proxy.send_timeout,
                  std::get<WorkerOptions>(worker).front.send_timeout)
            << "the relayed answers' writes go to the same clients";
        const auto door = parse_front_door(args);
        ASSERT_TRUE(std::holds_alternative<FrontDoorOptions>(door));
        expect_limits(std::get<FrontDoorOptions>(door).door, least);
    }
}

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
