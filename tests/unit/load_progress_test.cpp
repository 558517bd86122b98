// Load progress from heartbeats: the model file's mapping when there is one, else memory against
// the estimate; never 100 % before ready; the time left from the rate; an event per quarter.
#include <gtest/gtest.h>

#include "supervisor/load_progress.h"

using namespace ensemble;
using namespace std::chrono_literals;

namespace {

protocol::WorkerStats mapped(std::uint64_t done, std::uint64_t file) {
    protocol::WorkerStats s;
    s.state = "loading";
    s.load_mapped_bytes = done;
    s.load_file_bytes = file;
    s.memory_bytes = 7 << 20;
    return s;
}

TEST(LoadTracker, FollowsTheModelFilesMappingAndExtrapolatesTheTimeLeft) {
    LoadTracker t;
    const LoadTracker::Clock::time_point start{};
    t.observe(mapped(0, 1000), 5000, start);
    ASSERT_TRUE(t.progress());
    EXPECT_EQ(t.progress()->measure, "mapping");
    EXPECT_EQ(t.progress()->fraction, 0);
    EXPECT_FALSE(t.progress()->eta_s) << "not yet seen moving";
    t.observe(mapped(100, 1000), 5000, start + 1s);
    EXPECT_FALSE(t.progress()->eta_s) << "one point is no rate";
    t.observe(mapped(300, 1000), 5000, start + 2s);
    EXPECT_DOUBLE_EQ(t.progress()->fraction, 0.3);
    ASSERT_TRUE(t.progress()->eta_s);
    EXPECT_DOUBLE_EQ(*t.progress()->eta_s, 700.0 / 200.0);  // 200 bytes/s since it moved
    EXPECT_EQ(t.crossed_quarter(), 25);
    t.observe(mapped(350, 1000), 5000, start + 3s);
    EXPECT_EQ(t.crossed_quarter(), 0) << "once per quarter";
    t.observe(mapped(1000, 1000), 5000, start + 4s);
    EXPECT_DOUBLE_EQ(t.progress()->fraction, kMaxLoadFraction) << "never 100 % before ready";
    EXPECT_EQ(t.crossed_quarter(), 75) << "past 50 and 75 at once: the highest";
    EXPECT_FALSE(t.progress()->eta_s) << "all read: what the engine does now, no rate tells";
    EXPECT_EQ(describe(*t.progress()), "99 % (1000 B of 1000 B of the model file resident)");
}

TEST(LoadTracker, WithoutAMappingMeasuresMemoryAgainstTheEstimateOrNothing) {
    LoadTracker t;
    protocol::WorkerStats s;
    s.state = "loading";
    s.memory_bytes = 3ULL << 30;
    t.observe(s, 12ULL << 30, {});
    EXPECT_FALSE(t.progress()) << "no engine running: the worker's own memory is no load";
    s.engine_pid = 4242;
    t.observe(s, 12ULL << 30, {});
    ASSERT_TRUE(t.progress());
    EXPECT_EQ(t.progress()->measure, "memory");
    EXPECT_DOUBLE_EQ(t.progress()->fraction, 0.25);
    s.memory_bytes = 20ULL << 30;  // past the estimate: still short of done
    t.observe(s, 12ULL << 30, {});
    EXPECT_DOUBLE_EQ(t.progress()->fraction, kMaxLoadFraction);
    EXPECT_EQ(t.progress()->done_bytes, 12ULL << 30);
    t.observe(s, 0, {});
    EXPECT_FALSE(t.progress()) << "no estimate, no mapping: nothing to tell";
    t.reset();
    EXPECT_FALSE(t.progress());
}

}  // namespace
