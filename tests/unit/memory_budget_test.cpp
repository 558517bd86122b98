// Admission under the memory budget: what fits, what is refused and why, and which idle ports
// are evicted (lowest priority, then least recently used) — all or nothing.
#include <gtest/gtest.h>

#include "supervisor/memory_budget.h"

using namespace ensemble;

namespace {

constexpr std::uint64_t GiB = 1ULL << 30;

BudgetHolder holder(int port, std::uint64_t gib, int priority = 0, bool evictable = false,
                    bool idle = true, std::int64_t last_used_ms = 0) {
    return {port,        "m" + std::to_string(port), gib * GiB, 0, priority, evictable, idle,
            last_used_ms};
}

TEST(MemoryBudgetTest, BudgetIsAbsoluteOrAShareOfPhysicalMemory) {
    EXPECT_EQ(resolve_budget("170GiB", 0), 170 * GiB);
    EXPECT_EQ(resolve_budget("85%", 200 * GiB), 170 * GiB);
    EXPECT_EQ(resolve_budget("100%", 8 * GiB), 8 * GiB);
    EXPECT_FALSE(resolve_budget("", 8 * GiB));
    EXPECT_FALSE(resolve_budget("lots", 8 * GiB));
}

TEST(MemoryBudgetTest, WhatFitsIsAdmittedWithoutEvictions) {
    const auto plan = plan_admission(10 * GiB, {holder(8100, 4)}, {{8101, "b", 6 * GiB, 0}}, {});
    EXPECT_TRUE(plan.admitted);
    EXPECT_TRUE(plan.evict.empty());
}

TEST(MemoryBudgetTest, RefusalNamesTheBudgetTheHoldersAndTheShortfall) {
    const auto plan = plan_admission(10 * GiB, {holder(8100, 4), holder(8101, 4)},
                                     {{8102, "big", 5 * GiB, 0}}, {});
    EXPECT_FALSE(plan.admitted);
    EXPECT_NE(plan.refusal.find("10.0 GiB memory budget"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("8100 'm8100' 4.0 GiB"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("8101 'm8101' 4.0 GiB"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("short by 3.0 GiB"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("'big' on port 8102"), std::string::npos) << plan.refusal;
}

TEST(MemoryBudgetTest, ReleasedPortsFreeTheirShare) {
    // A swap of 8100 from a 4 GiB model to a 7 GiB one, in a 10 GiB budget with 3 GiB elsewhere.
    const auto plan = plan_admission(10 * GiB, {holder(8100, 4), holder(8101, 3)},
                                     {{8100, "bigger", 7 * GiB, 0}}, {8100});
    EXPECT_TRUE(plan.admitted);
}

TEST(MemoryBudgetTest, MeasuredAboveTheEstimateIsCharged) {
    auto grown = holder(8100, 2);
    grown.measured = 9 * GiB;
    EXPECT_FALSE(plan_admission(10 * GiB, {grown}, {{8101, "b", 2 * GiB, 0}}, {}).admitted);
}

TEST(MemoryBudgetTest, EvictsLowestPriorityThenLeastRecentlyUsed) {
    const std::vector<BudgetHolder> holders = {
        holder(8100, 3, /*priority=*/1, true, true, /*last_used=*/100),
        holder(8101, 3, 0, true, true, 300),
        holder(8102, 3, 0, true, true, 200),
    };
    auto plan = plan_admission(10 * GiB, holders, {{8103, "new", 4 * GiB, 1}}, {});
    ASSERT_TRUE(plan.admitted);
    EXPECT_EQ(plan.evict, std::vector<int>{8102});  // priority 0, used longest ago
    plan = plan_admission(10 * GiB, holders, {{8103, "new", 7 * GiB, 1}}, {});
    ASSERT_TRUE(plan.admitted);
    EXPECT_EQ(plan.evict, (std::vector<int>{8102, 8101}));
}

TEST(MemoryBudgetTest, BusyPinnedAndHigherPriorityPortsAreNotEvicted) {
    const std::vector<BudgetHolder> holders = {
        holder(8100, 3, 0, /*evictable=*/false),
        holder(8101, 3, 0, true, /*idle=*/false),
        holder(8102, 3, /*priority=*/5, true),
    };
    const auto plan = plan_admission(10 * GiB, holders, {{8103, "new", 4 * GiB, 1}}, {});
    EXPECT_FALSE(plan.admitted);
    EXPECT_TRUE(plan.evict.empty());
}

TEST(MemoryBudgetTest, AllOrNothingWhenEvictingCannotMakeRoom) {
    const std::vector<BudgetHolder> holders = {holder(8100, 3, 0, true), holder(8101, 5)};
    const auto plan =
        plan_admission(10 * GiB, holders, {{8102, "a", 4 * GiB, 0}, {8103, "b", 4 * GiB, 0}}, {});
    EXPECT_FALSE(plan.admitted);
    EXPECT_TRUE(plan.evict.empty()) << "nothing may be evicted when the load is refused anyway";
    EXPECT_NE(plan.refusal.find("even after evicting"), std::string::npos) << plan.refusal;
}

TEST(MemoryBudgetTest, OverBudgetVictimIsTheLowestPriorityLeastRecentlyUsed) {
    EXPECT_FALSE(over_budget_victim({}));
    EXPECT_EQ(over_budget_victim({holder(8100, 1, 3, false, false, 1),
                                  holder(8101, 1, 1, false, false, 50),
                                  holder(8102, 1, 1, false, false, 10)}),
              8102);
}

}  // namespace
