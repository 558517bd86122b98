// Signal names for messages: "SIGKILL" for 9 on Linux and on macOS alike, though some numbers
// differ between them (glibc's sigabbrev_np and Darwin's sys_signame are each one OS's only).
#pragma once

#include <string>

namespace ensemble {

// "SIGTERM", or "signal 42" for a number without a name here.
std::string signal_name(int signal);

}  // namespace ensemble
