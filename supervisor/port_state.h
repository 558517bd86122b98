// The states of a port and the one function that moves between them. Every transition is
// checked against this table and written to the event log with its reason.
//
//   stopped -> starting -> loading -> ready <-> draining -> stopping -> stopped
//   any running state --exited--> backoff --retry--> starting;  too many failures -> failed
//   a survivor of an earlier supervisor is adopted into starting; a port held by a worker on
//   its way out waits in backoff; a recorded worker that cannot be verified leaves it failed;
//   a chained model waits (no worker, port closed) until its upstream is ready, then starts
#pragma once

#include <optional>
#include <string>

namespace ensemble {

enum class PortState {
    stopped,
    starting,
    loading,
    ready,
    draining,
    stopping,
    backoff,
    failed,
    waiting
};
inline constexpr PortState kPortStates[] = {
    PortState::stopped, PortState::starting, PortState::loading,
    PortState::ready,   PortState::draining, PortState::stopping,
    PortState::backoff, PortState::failed,   PortState::waiting};

enum class PortEvent {
    spawn,           // a worker process was started
    registered,      // the worker connected and proved its token
    engine_loading,  // heartbeat: the engine is (re)loading
    engine_ready,    // heartbeat: the engine answers its readiness probe
    drain,           // stop taking new requests (swap, unload)
    stop,            // asked to exit
    exited,          // the worker process is gone, as asked
    failed,          // the worker is gone unasked, or could not start: restart after a backoff
    crash_loop,      // failed too often: stay down until an operator restarts the port
    adopt,           // a worker this supervisor did not start is taken on (it reconnects)
    wait,            // the port is held by another worker (leaving, or to be adopted)
    unverifiable,    // a recorded worker cannot be told alive or dead: never start a second
    wait_upstream,   // a chained model's upstream is not ready (or is gone): start once it is
};

const char* to_string(PortState state);
const char* to_string(PortEvent event);

// The state after `event` in `from`, or nullopt when the event makes no sense there.
std::optional<PortState> transition(PortState from, PortEvent event);

bool is_running(PortState state);  // a worker process exists (or is expected to)

}  // namespace ensemble
