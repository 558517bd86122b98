// control.sock's edge: a parsed request in, one reply out. The fleet answers with values
// (fleet.h); this is the one place they become the wire's JSON (docs/PROTOCOL.md), and where
// the commands that change the fleet are taken one at a time.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>

#include "protocol/messages.h"
#include "supervisor/fleet.h"

namespace ensemble {

class ControlApi {
  public:
    explicit ControlApi(Fleet& fleet) : fleet_(fleet) {}
    // Commands still in flight are destroyed with the io_context, after the fleet: their turn
    // is not handed back to a fleet that is gone.
    ~ControlApi() { *alive_ = false; }
    ControlApi(const ControlApi&) = delete;
    ControlApi& operator=(const ControlApi&) = delete;

    awaitable<nlohmann::json> handle(const protocol::ControlRequest& request);

  private:
    // A command not waited for ("wait": false), run to its end; a failure becomes an event.
    awaitable<void> carry_on(protocol::ControlRequest request);
    // What can be refused before a command not waited for is accepted: an unknown model or
    // profile, a port not allowed.
    Status check_before_accepting(const protocol::ControlRequest& request) const;

    Fleet& fleet_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The replies' parts, for the verbs and their tests.
nlohmann::json to_json(const LoadProgress& load);
nlohmann::json to_json(const PortReport& port);
nlohmann::json to_json(const BudgetReport& budget);
nlohmann::json to_json(const FleetStatus& status);
nlohmann::json to_json(const Event& event);
nlohmann::json to_json(const std::vector<Event>& events);  // an array

}  // namespace ensemble
