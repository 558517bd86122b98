// Loads on demand for the front door, decided by the fleet one at a time on a pretend machine:
// one load however many ask, two cold models that cannot both fit, room made by an idle one,
// a full pool, idle on-demand loads unloaded, and the routes the front door is sent.
#include "tests/support/fleet_harness.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

constexpr int kPool1 = 8110, kPool2 = 8111;

class OnDemandTest : public FleetFixture {
  protected:
    void start_with_pool(const std::string& settings, const std::string& pool = "[8110, 8111]",
                         const std::string& door_idle = "10m") {
        start(settings + "  front_door:\n    listen: 127.0.0.1:11434\n    ports: " + pool +
                  "\n    evict_idle_after: " + door_idle + "\n",
              "  c1: {engine: fake, path: none, memory: 5GiB, on_demand: true}\n"
              "  c2: {engine: fake, path: none, memory: 5GiB, on_demand: true}\n"
              "  c3: {engine: fake, path: none, memory: 5GiB, on_demand: true}\n"
              "  fixed: {engine: fake, path: none, memory: 1GiB}\n");
    }

    // A demand as the front door's keeper runs it: with the turn held.
    using Outcome = std::shared_ptr<std::optional<Result<PortReport>>>;
    Outcome begin_demand(const std::string& handle) {
        auto result = std::make_shared<std::optional<Result<PortReport>>>();
        asio::co_spawn(io_, run_demand(*fleet_, handle, result), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
        return result;
    }
    static awaitable<void> run_demand(Fleet& fleet, std::string handle, Outcome result) {
        co_await fleet.wait_turn();
        auto loaded = co_await fleet.load_on_demand(handle);
        fleet.end_turn();
        *result = std::move(loaded);
    }
    Result<PortReport> demand(const std::string& handle) {
        auto result = begin_demand(handle);
        for (int i = 0; i < 600 && !*result; ++i)
            advance(100ms);
        EXPECT_TRUE(*result);
        return std::move(**result);
    }
    const protocol::Route& route(const std::vector<protocol::Route>& routes,
                                 const std::string& handle) {
        for (const auto& r : routes) {
            if (r.handle == handle) return r;
        }
        ADD_FAILURE() << "no route for " << handle;
        return routes.front();
    }
};

TEST_F(OnDemandTest, ManyDemandsForOneModelLoadItOnceOnThePool) {
    start_with_pool("");
    auto first = begin_demand("c1");
    auto second = begin_demand("c1");
    for (int i = 0; i < 100 && !(*first && *second); ++i)
        advance(100ms);
    ASSERT_TRUE(*first && **first) << (*first ? (*first)->error().message : "no answer");
    ASSERT_TRUE(*second && **second);
    EXPECT_EQ((**first)->port.port, kPool1);
    EXPECT_EQ((**second)->port.port, kPool1) << "the second found it served: no second load";
    EXPECT_EQ(events_of_kind("on_demand").size(), 1U);
    const auto routes = fleet_->routes();
    EXPECT_EQ(route(routes, "c1").port, kPool1);
    EXPECT_EQ(route(routes, "c1").state, "ready");
    EXPECT_GT(route(routes, "c1").expires_unix, 0) << "unloaded when idle: ps says when";
    EXPECT_TRUE(route(routes, "c1").on_demand);
    EXPECT_EQ(route(routes, "c2").port, 0);
    EXPECT_FALSE(route(routes, "fixed").on_demand);
}

TEST_F(OnDemandTest, TwoColdModelsThatCannotBothFitAreDecidedOneAtATime) {
    start_with_pool("  memory_budget: 7GiB\n");
    auto first = begin_demand("c1");
    auto second = begin_demand("c2");
    for (int i = 0; i < 100 && !(*first && *second); ++i)
        advance(100ms);
    ASSERT_TRUE(*first && *second);
    EXPECT_TRUE(**first) << (*first)->error().message;
    ASSERT_FALSE(**second) << "5 + 5 GiB do not fit in 7, and c1 is not idle yet";
    EXPECT_EQ((*second)->error().code, "over_budget") << (*second)->error().message;
    EXPECT_EQ(port_status(kPool1)["state"], "ready");
    EXPECT_TRUE(port_status(kPool2).is_null()) << "nothing half-started";
}

TEST_F(OnDemandTest, AnIdleOnDemandLoadMakesRoomForTheNext) {
    start_with_pool("  memory_budget: 7GiB\n  evict_idle_after: 1s\n");
    ASSERT_TRUE(demand("c1"));
    advance(5s);
    const auto second = demand("c2");
    ASSERT_TRUE(second) << second.error().message;
    EXPECT_EQ(events_of_kind("evict").size(), 1U);
    EXPECT_TRUE(port_status(kPool1).is_null());
    EXPECT_EQ(port_status(second->port.port)["state"], "ready");
}

TEST_F(OnDemandTest, AFullPoolOfModelsInUseRefusesSayingSo) {
    start_with_pool("", "[8110]");
    ASSERT_TRUE(demand("c1"));
    auto refused = begin_demand("c2");
    for (int i = 0; i < 100 && !*refused; ++i) {
        serve(kPool1);  // c1 is in use all along
        advance(100ms);
    }
    ASSERT_TRUE(*refused);
    ASSERT_FALSE(**refused);
    EXPECT_EQ((*refused)->error().code, "pool_full") << (*refused)->error().message;
    EXPECT_EQ(port_status(kPool1)["model"], "c1");
}

TEST_F(OnDemandTest, AModelNotOnDemandIsNotLoaded) {
    start_with_pool("");
    const auto refused = demand("fixed");
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, "not_on_demand");
    EXPECT_NE(refused.error().message.find("on_demand: true"), std::string::npos);
    EXPECT_TRUE(port_status(kPool1).is_null());
}

TEST_F(OnDemandTest, AnIdleOnDemandLoadIsUnloadedAndOneInUseIsKept) {
    start_with_pool("", "[8110, 8111]", "3s");
    ASSERT_TRUE(demand("c1"));
    ASSERT_TRUE(demand("c2"));
    for (int i = 0; i < 60; ++i) {  // 6 s: c2 serves all along, c1 nothing
        serve(kPool2);
        advance(100ms);
    }
    EXPECT_EQ(events_of_kind("idle_unload").size(), 1U);
    EXPECT_TRUE(port_status(kPool1).is_null()) << "unloaded, and unassigned";
    EXPECT_EQ(port_status(kPool2)["state"], "ready");
    EXPECT_EQ(fleet_->routes().front().port, 0) << "c1 is not loaded any more";
}

// Ollama's keep_alive, passed on by the front door, is the idle time of that model on that
// port: 0 unloads it once idle, for ever never; a port outside the pool keeps its model.
TEST_F(OnDemandTest, KeepAliveSetsTheIdleTimeOfThatLoadOnly) {
    start_with_pool("", "[8110, 8111]", "10m");
    ASSERT_TRUE(demand("c1"));
    ASSERT_TRUE(demand("c2"));
    fleet_->keep_alive({"c1", kPool1, 2});
    fleet_->keep_alive({"c2", kPool2, protocol::KeepAlive::kForever});
    fleet_->keep_alive({"c2", kPool1, 0});  // not what serves there: ignored
    EXPECT_GT(route(fleet_->routes(), "c1").expires_unix, 0);
    EXPECT_EQ(route(fleet_->routes(), "c2").expires_unix, 0) << "never";
    for (int i = 0; i < 40; ++i)
        advance(100ms);
    EXPECT_TRUE(port_status(kPool1).is_null()) << "idle for its 2 s keep_alive: unloaded";
    const auto unloads = events_of_kind("idle_unload");
    ASSERT_EQ(unloads.size(), 1U);
    EXPECT_NE(unloads.front().find("keep_alive"), std::string::npos);
    // Loaded again: the default again, not the keep_alive of the load before.
    ASSERT_TRUE(demand("c1"));
    for (int i = 0; i < 40; ++i)
        advance(100ms);
    EXPECT_EQ(port_status(kPool1)["state"], "ready");
    // A request without one puts the default back.
    EXPECT_TRUE(fleet_->keep_alive({"c1", kPool1, 1}));
    EXPECT_TRUE(fleet_->keep_alive({"c1", kPool1, protocol::KeepAlive::kDefault}));
    for (int i = 0; i < 30; ++i)
        advance(100ms);
    EXPECT_EQ(port_status(kPool1)["state"], "ready");
    // A port busy with a request (another client's stream) is not idle, whatever its keep_alive.
    set_in_flight(kPool1, 1);
    for (int i = 0; i < 11; ++i)
        advance(100ms);
    fleet_->keep_alive({"c1", kPool1, 0});
    for (int i = 0; i < 30; ++i)
        advance(100ms);
    EXPECT_EQ(port_status(kPool1)["state"], "ready") << "a stream in flight";
    set_in_flight(kPool1, 0);
    for (int i = 0; i < 30; ++i)
        advance(100ms);
    EXPECT_TRUE(port_status(kPool1).is_null()) << "keep_alive 0: unloaded once idle";
    EXPECT_EQ(port_status(kPool2)["state"], "ready") << "kept for ever";
    EXPECT_FALSE(fleet_->keep_alive({"c1", kPool1, 5})) << "for a load that is gone: ignored";
    EXPECT_FALSE(fleet_->keep_alive({"fixed", 8100, 5})) << "not a pool port: ignored";
}

// Room on a full pool is made by the idlest model, one kept for ever (keep_alive -1) last.
TEST_F(OnDemandTest, AModelKeptForEverMakesRoomOnlyWhenNoOtherIdles) {
    start_with_pool("  evict_idle_after: 1s\n  memory_budget: 100GiB\n");
    ASSERT_TRUE(demand("c1"));
    ASSERT_TRUE(demand("c2"));
    ASSERT_TRUE(fleet_->keep_alive({"c1", kPool1, protocol::KeepAlive::kForever}));
    for (int i = 0; i < 30; ++i)
        advance(100ms);  // both idle; c1 the longer
    ASSERT_TRUE(demand("c3"));
    EXPECT_EQ(port_status(kPool1)["model"], "c1") << "kept";
    EXPECT_EQ(port_status(kPool2)["model"], "c3") << "c2 made room";
}

}  // namespace
