#include "supervisor/service_manager.h"

#ifdef ENSEMBLE_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace ensemble::service_manager {

#ifdef ENSEMBLE_HAVE_LIBSYSTEMD

void ready(const std::string& text) {
    sd_notifyf(0, "READY=1\nSTATUS=%s", text.c_str());
}

void status(const std::string& text) {
    sd_notifyf(0, "STATUS=%s", text.c_str());
}

void stopping() {
    sd_notify(0, "STOPPING=1\nSTATUS=stopping every worker");
}

std::optional<std::chrono::milliseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
    return std::chrono::milliseconds(usec / 2000);
}

void watchdog() {
    sd_notify(0, "WATCHDOG=1");
}

#else

void ready(const std::string&) {}
void status(const std::string&) {}
void stopping() {}
std::optional<std::chrono::milliseconds> watchdog_interval() {
    return std::nullopt;
}
void watchdog() {}

#endif

}  // namespace ensemble::service_manager
