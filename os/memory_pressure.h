// What the OS says about memory trouble: the pressure level now, and the OOM kills counted so
// far. macOS's jetsam kills under critical pressure with a plain SIGKILL, so the level at the
// time of a kill is what tells such a kill apart (memory_kill_watch.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ensemble {

enum class MemoryPressure { normal, warning, critical, unknown };
const char* to_string(MemoryPressure pressure);

// The level now. macOS: kern.memorystatus_vm_pressure_level. Linux: pressure stall information
// (PSI) of the memory cgroup this service runs in (cgroup v2; the system's /proc/pressure/memory
// otherwise, and always in portable mode). With ENSEMBLE_MEMORY_PRESSURE_SOURCE naming a file,
// that file is read as PSI instead, on either OS: how the tests put a machine under pressure.
MemoryPressure memory_pressure();
inline constexpr const char* kPressureSourceVariable = "ENSEMBLE_MEMORY_PRESSURE_SOURCE";

// The OS's own reading (the per-OS half of memory_pressure()).
MemoryPressure system_memory_pressure();

// OOM kills the kernel counted so far where this service runs (Linux: the memory cgroup's
// oom_kill; nullopt in portable mode and on macOS, whose jetsam is seen through the pressure).
std::optional<std::uint64_t> oom_kill_count();

// Linux PSI text ("some avg10=.. avg60=.. avg300=.. total=..", "full ..."): critical when every
// task was stalled on memory at least kCriticalFullStall % of the last 10 s (what Android's lmkd
// calls critical, near systemd-oomd's kill threshold), warning when some task was stalled at
// least kWarningSomeStall %; unknown when the text has no avg10.
MemoryPressure pressure_from_psi(const std::string& text);
inline constexpr double kCriticalFullStall = 50.0;
inline constexpr double kWarningSomeStall = 10.0;

// macOS kern.memorystatus_vm_pressure_level: 1 normal, 2 warning, 4 critical.
MemoryPressure pressure_from_darwin_level(long level);

// The "oom_kill N" count in a memory.events or memory.oom_control text.
std::optional<std::uint64_t> parse_oom_kill_count(const std::string& text);

}  // namespace ensemble
