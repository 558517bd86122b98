#include "supervisor/port_state.h"

namespace ensemble {

const char* to_string(PortState s) {
    switch (s) {
        case PortState::stopped:
            return "stopped";
        case PortState::starting:
            return "starting";
        case PortState::loading:
            return "loading";
        case PortState::ready:
            return "ready";
        case PortState::draining:
            return "draining";
        case PortState::stopping:
            return "stopping";
        case PortState::backoff:
            return "backoff";
        case PortState::failed:
            return "failed";
        case PortState::waiting:
            return "waiting";
    }
    return "unknown";
}

const char* to_string(PortEvent e) {
    switch (e) {
        case PortEvent::spawn:
            return "spawn";
        case PortEvent::registered:
            return "registered";
        case PortEvent::engine_loading:
            return "engine_loading";
        case PortEvent::engine_ready:
            return "engine_ready";
        case PortEvent::drain:
            return "drain";
        case PortEvent::stop:
            return "stop";
        case PortEvent::exited:
            return "exited";
        case PortEvent::failed:
            return "failed";
        case PortEvent::crash_loop:
            return "crash_loop";
        case PortEvent::adopt:
            return "adopt";
        case PortEvent::wait:
            return "wait";
        case PortEvent::unverifiable:
            return "unverifiable";
        case PortEvent::wait_upstream:
            return "wait_upstream";
    }
    return "unknown";
}

std::optional<PortState> transition(PortState from, PortEvent event) {
    using S = PortState;
    // No worker runs and none is due: a start may begin from here.
    const bool idle =
        from == S::stopped || from == S::backoff || from == S::failed || from == S::waiting;
    switch (event) {
        case PortEvent::spawn:
            if (idle) return S::starting;
            break;
        case PortEvent::registered:
            if (from == S::starting) return S::loading;
            break;
        case PortEvent::engine_loading:
            if (from == S::loading || from == S::ready) return S::loading;
            break;
        case PortEvent::engine_ready:
            if (from == S::loading || from == S::ready) return S::ready;
            break;
        case PortEvent::drain:
            if (from == S::loading || from == S::ready) return S::draining;
            break;
        case PortEvent::stop:
            if (from == S::starting || from == S::loading || from == S::ready ||
                from == S::draining) {
                return S::stopping;
            }
            if (from == S::backoff || from == S::failed || from == S::waiting) return S::stopped;
            break;
        case PortEvent::exited:
            if (is_running(from) || from == S::stopped) return S::stopped;
            break;
        case PortEvent::failed:  // also a start that failed before any worker ran
            if (is_running(from) || from == S::stopped || from == S::backoff || from == S::waiting)
                return S::backoff;
            break;
        case PortEvent::crash_loop:
            if (is_running(from) || from == S::stopped || from == S::backoff || from == S::waiting)
                return S::failed;
            break;
        case PortEvent::adopt:
            if (from == S::stopped || from == S::backoff) return S::starting;
            break;
        case PortEvent::wait:
            if (idle) return S::backoff;
            break;
        case PortEvent::unverifiable:
            if (from == S::stopped) return S::failed;
            break;
        case PortEvent::wait_upstream:
            if (idle) return S::waiting;
            break;
    }
    return std::nullopt;
}

bool is_running(PortState s) {
    return s == PortState::starting || s == PortState::loading || s == PortState::ready ||
           s == PortState::draining || s == PortState::stopping;
}

}  // namespace ensemble
