// The port state machine and the restart policy, as specifications.
#include <gtest/gtest.h>

#include "supervisor/port_state.h"
#include "supervisor/restart_policy.h"

using namespace ensemble;
using namespace std::chrono_literals;

namespace {

TEST(PortState, TheHappyPath) {
    auto s = PortState::stopped;
    for (auto [event, expected] : {std::pair{PortEvent::spawn, PortState::starting},
                                   {PortEvent::registered, PortState::loading},
                                   {PortEvent::engine_ready, PortState::ready},
                                   {PortEvent::stop, PortState::stopping},
                                   {PortEvent::exited, PortState::stopped}}) {
        const auto next = transition(s, event);
        ASSERT_TRUE(next) << to_string(s) << " + " << to_string(event);
        EXPECT_EQ(*next, expected);
        s = *next;
    }
}

TEST(PortState, AStartThatFailsBeforeAnyWorkerRanBacksOffToo) {
    EXPECT_EQ(transition(PortState::stopped, PortEvent::failed), PortState::backoff);
    EXPECT_EQ(transition(PortState::backoff, PortEvent::failed), PortState::backoff);
    EXPECT_EQ(transition(PortState::backoff, PortEvent::crash_loop), PortState::failed);
}

TEST(PortState, FailuresBackOffThenCrashLoopToFailed) {
    EXPECT_EQ(transition(PortState::ready, PortEvent::failed), PortState::backoff);
    EXPECT_EQ(transition(PortState::backoff, PortEvent::spawn), PortState::starting);
    EXPECT_EQ(transition(PortState::loading, PortEvent::crash_loop), PortState::failed);
    EXPECT_EQ(transition(PortState::failed, PortEvent::spawn),
              PortState::starting);  // operator restart
    EXPECT_EQ(transition(PortState::failed, PortEvent::stop), PortState::stopped);
}

TEST(PortState, AdoptionWaitsAndUnverifiableWorkers) {
    // A survivor reconnecting, into a fresh port or one waiting for it.
    EXPECT_EQ(transition(PortState::stopped, PortEvent::adopt), PortState::starting);
    EXPECT_EQ(transition(PortState::backoff, PortEvent::adopt), PortState::starting);
    EXPECT_FALSE(transition(PortState::failed, PortEvent::adopt)) << "a crash loop stays down";
    EXPECT_FALSE(transition(PortState::ready, PortEvent::adopt)) << "one worker per port";
    // A port held by a worker on its way out waits, and is not a failure.
    EXPECT_EQ(transition(PortState::stopped, PortEvent::wait), PortState::backoff);
    EXPECT_EQ(transition(PortState::failed, PortEvent::wait), PortState::backoff);
    EXPECT_FALSE(transition(PortState::ready, PortEvent::wait));
    EXPECT_EQ(transition(PortState::stopped, PortEvent::unverifiable), PortState::failed);
    EXPECT_FALSE(transition(PortState::ready, PortEvent::unverifiable));
}

TEST(PortState, AChainedModelWaitsForItsUpstreamWithoutAWorker) {
    for (const auto from : {PortState::stopped, PortState::backoff, PortState::failed})
        EXPECT_EQ(transition(from, PortEvent::wait_upstream), PortState::waiting)
            << to_string(from);
    EXPECT_FALSE(transition(PortState::ready, PortEvent::wait_upstream)) << "stopped first";
    EXPECT_FALSE(is_running(PortState::waiting));
    EXPECT_EQ(transition(PortState::waiting, PortEvent::spawn), PortState::starting);
    EXPECT_EQ(transition(PortState::waiting, PortEvent::stop), PortState::stopped) << "unloaded";
    EXPECT_EQ(transition(PortState::waiting, PortEvent::failed), PortState::backoff)
        << "its own start failed";
    EXPECT_FALSE(transition(PortState::waiting, PortEvent::engine_ready));
    EXPECT_STREQ(to_string(PortState::waiting), "waiting");
}

TEST(PortState, NonsenseEventsAreRefused) {
    EXPECT_FALSE(transition(PortState::stopped, PortEvent::engine_ready));
    EXPECT_FALSE(transition(PortState::ready, PortEvent::spawn));
    EXPECT_FALSE(transition(PortState::failed, PortEvent::failed)) << "a crash loop stays down";
    EXPECT_FALSE(transition(PortState::starting, PortEvent::engine_ready));  // must register first
}

TEST(RestartPolicy, RestartsAtOnceThenBacksOffExponentiallyToACap) {
    RestartSettings s;
    s.crash_loop_failures = 100;  // only the backoff here
    RestartPolicy p(s);
    auto t = RestartPolicy::Clock::now();
    std::vector<long> delays;
    for (int i = 0; i < 10; ++i)
        delays.push_back(p.on_failure(t += 1s)->count());
    EXPECT_EQ(delays,
              (std::vector<long>{0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000}));
}

TEST(RestartPolicy, FiveFailuresInFiveMinutesIsACrashLoop) {
    RestartPolicy p;
    auto t = RestartPolicy::Clock::now();
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(p.on_failure(t += 10s));
    EXPECT_FALSE(p.on_failure(t += 10s));
    p.reset();
    EXPECT_TRUE(p.on_failure(t += 1s));
}

TEST(RestartPolicy, FailuresOutsideTheWindowDoNotCount) {
    RestartPolicy p;
    auto t = RestartPolicy::Clock::now();
    for (int i = 0; i < 10; ++i)
        EXPECT_TRUE(p.on_failure(t += 2min)) << i;
}

TEST(RestartPolicy, AHealthyPeriodResetsTheBackoff) {
    RestartSettings s;
    s.crash_loop_failures = 100;  // only the backoff here
    RestartPolicy p(s);
    auto t = RestartPolicy::Clock::now();
    EXPECT_EQ(p.on_failure(t)->count(), 0);
    EXPECT_EQ(p.on_failure(t += 1s)->count(), 1000);
    EXPECT_EQ(p.on_failure(t += 1s)->count(), 2000);
    const auto ready = t;
    EXPECT_EQ(p.on_failure(t += 62s, ready)->count(), 0);
    EXPECT_EQ(p.on_failure(t += 1s)->count(), 1000);
}

// Found by an adversarial run: failures at start (port in use, no descriptors, a bad model) were
// all restarted at once, so five of them made a crash loop in 0.17 s instead of 1, 2, 4 s apart.
TEST(RestartPolicy, FailuresOfRunsThatNeverBecameReadyBackOff) {
    RestartPolicy p;
    auto t = RestartPolicy::Clock::now();
    std::vector<long> delays;
    for (int i = 0; i < 4; ++i)
        delays.push_back(p.on_failure(t += 10ms, std::nullopt)->count());
    EXPECT_EQ(delays, (std::vector<long>{0, 1000, 2000, 4000}));
    EXPECT_FALSE(p.on_failure(t += 10ms)) << "the fifth is a crash loop";
    // A run that was ready only briefly does not start the backoff over either.
    RestartPolicy q;
    EXPECT_EQ(q.on_failure(t += 1s)->count(), 0);
    EXPECT_EQ(q.on_failure(t += 1s, t - 500ms)->count(), 1000);
}

}  // namespace
