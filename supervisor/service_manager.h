// Talks to the service manager that started ensembled, if any: systemd's sd_notify (READY,
// STATUS, STOPPING, WATCHDOG) when built with libsystemd and started by a Type=notify unit.
// Everything here is a no-op otherwise, so ensembled runs the same by hand, under launchd or in
// a test.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace ensemble::service_manager {

void ready(const std::string& status);
void status(const std::string& status);
void stopping();
// How often to ping the watchdog (half of WatchdogSec=), or nullopt when no watchdog is armed.
std::optional<std::chrono::milliseconds> watchdog_interval();
void watchdog();

}  // namespace ensemble::service_manager
