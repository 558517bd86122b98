// Portable mode: a Linux run that uses only what macOS has. With ENSEMBLE_PORTABLE=1 in the
// environment (inherited by every process Ensemble starts) the Linux-only mechanisms are off:
// engines do not die with their worker through PR_SET_PDEATHSIG, and no memory cgroup is read
// (OOM-kill counts, limits). Whatever macOS relies on — the supervisor's records of engines,
// process identities, memory pressure — then carries the whole load, and the Linux test suites
// prove it on every commit.
#pragma once

namespace ensemble {

inline constexpr const char* kPortableModeVariable = "ENSEMBLE_PORTABLE";

// True when ENSEMBLE_PORTABLE is set to 1 (read once), and always on macOS.
bool portable_mode();

}  // namespace ensemble
