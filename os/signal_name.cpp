#include "os/signal_name.h"

#include <signal.h>

#include <array>
#include <utility>

namespace ensemble {

namespace {

#define ENSEMBLE_SIGNAL(name)     \
    std::pair<int, const char*> { \
        name, #name               \
    }
constexpr std::array kSignals{
    ENSEMBLE_SIGNAL(SIGHUP),    ENSEMBLE_SIGNAL(SIGINT),  ENSEMBLE_SIGNAL(SIGQUIT),
    ENSEMBLE_SIGNAL(SIGILL),    ENSEMBLE_SIGNAL(SIGTRAP), ENSEMBLE_SIGNAL(SIGABRT),
    ENSEMBLE_SIGNAL(SIGBUS),    ENSEMBLE_SIGNAL(SIGFPE),  ENSEMBLE_SIGNAL(SIGKILL),
    ENSEMBLE_SIGNAL(SIGUSR1),   ENSEMBLE_SIGNAL(SIGSEGV), ENSEMBLE_SIGNAL(SIGUSR2),
    ENSEMBLE_SIGNAL(SIGPIPE),   ENSEMBLE_SIGNAL(SIGALRM), ENSEMBLE_SIGNAL(SIGTERM),
    ENSEMBLE_SIGNAL(SIGCHLD),   ENSEMBLE_SIGNAL(SIGCONT), ENSEMBLE_SIGNAL(SIGSTOP),
    ENSEMBLE_SIGNAL(SIGTSTP),   ENSEMBLE_SIGNAL(SIGTTIN), ENSEMBLE_SIGNAL(SIGTTOU),
    ENSEMBLE_SIGNAL(SIGURG),    ENSEMBLE_SIGNAL(SIGXCPU), ENSEMBLE_SIGNAL(SIGXFSZ),
    ENSEMBLE_SIGNAL(SIGVTALRM), ENSEMBLE_SIGNAL(SIGPROF), ENSEMBLE_SIGNAL(SIGWINCH),
    ENSEMBLE_SIGNAL(SIGIO),     ENSEMBLE_SIGNAL(SIGSYS),
#ifdef SIGSTKFLT
    ENSEMBLE_SIGNAL(SIGSTKFLT),
#endif
#ifdef SIGPWR
    ENSEMBLE_SIGNAL(SIGPWR),
#endif
#ifdef SIGEMT
    ENSEMBLE_SIGNAL(SIGEMT),
#endif
#ifdef SIGINFO
    ENSEMBLE_SIGNAL(SIGINFO),
#endif
};
#undef ENSEMBLE_SIGNAL

}  // namespace

std::string signal_name(int signal) {
    for (const auto& [number, name] : kSignals) {
        if (number == signal) return name;
    }
    return "signal " + std::to_string(signal);
}

}  // namespace ensemble
