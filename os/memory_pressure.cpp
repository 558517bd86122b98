#include "os/memory_pressure.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace ensemble {

namespace {

// The avg10 percentage of the "some" or "full" line of a PSI text.
std::optional<double> psi_avg10(const std::string& text, const std::string& kind) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream words(line);
        std::string first, avg10;
        if (!(words >> first >> avg10) || first != kind || avg10.rfind("avg10=", 0) != 0) continue;
        try {
            return std::stod(avg10.substr(6));
        } catch (const std::exception&) {
            return std::nullopt;  // malformed: the caller says unknown
        }
    }
    return std::nullopt;
}

}  // namespace

MemoryPressure memory_pressure() {
    if (const char* source = std::getenv(kPressureSourceVariable); source != nullptr && *source) {
        std::ifstream in(source);
        std::string text(4096, '\0');
        in.read(text.data(), static_cast<std::streamsize>(text.size()));
        text.resize(static_cast<std::size_t>(in.gcount()));
        return pressure_from_psi(text);
    }
    return system_memory_pressure();
}

const char* to_string(MemoryPressure pressure) {
    switch (pressure) {
        case MemoryPressure::normal:
            return "normal";
        case MemoryPressure::warning:
            return "warning";
        case MemoryPressure::critical:
            return "critical";
        case MemoryPressure::unknown:
            return "unknown";
    }
    return "unknown";
}

MemoryPressure pressure_from_psi(const std::string& text) {
    const auto some = psi_avg10(text, "some");
    const auto full = psi_avg10(text, "full");
    if (!some && !full) return MemoryPressure::unknown;
    if (full && *full >= kCriticalFullStall) return MemoryPressure::critical;
    if ((some && *some >= kWarningSomeStall) || (full && *full >= kWarningSomeStall))
        return MemoryPressure::warning;
    return MemoryPressure::normal;
}

MemoryPressure pressure_from_darwin_level(long level) {
    switch (level) {
        case 1:
            return MemoryPressure::normal;
        case 2:
            return MemoryPressure::warning;
        case 4:
            return MemoryPressure::critical;
        default:
            return MemoryPressure::unknown;
    }
}

std::optional<std::uint64_t> parse_oom_kill_count(const std::string& text) {
    std::istringstream lines(text);
    std::string key;
    std::uint64_t value = 0;
    while (lines >> key >> value) {
        if (key == "oom_kill") return value;
    }
    return std::nullopt;
}

}  // namespace ensemble
