#include "protocol/worker_contract.h"

#include <regex>

namespace ensemble::protocol {

std::filesystem::path log_folder(const std::filesystem::path& state_dir) {
    return state_dir / "logs";
}

namespace {

// "8100" for slot 0, "8100.b" for slot 1.
std::string slot_name(int port, int slot) {
    return std::to_string(port) + (slot == 0 ? "" : ".b");
}

}  // namespace

PortFiles port_files(const std::filesystem::path& log_dir, int port, int slot) {
    const auto number = slot_name(port, slot);
    const auto engine_log = log_dir / ("engine-" + number + ".log");
    return {.worker_log = log_dir / ("worker-" + number + ".log"),
            .engine_log = engine_log,
            .engine_record = engine_record_for(engine_log)};
}

std::filesystem::path engine_record_for(const std::filesystem::path& engine_log) {
    auto path = std::filesystem::path(engine_log).replace_extension(".pid");
    if (path == engine_log) path += ".record";  // a log itself named *.pid
    return path;
}

std::filesystem::path engine_socket(const std::filesystem::path& run_dir, int port, int slot) {
    return run_dir / ("engine-" + slot_name(port, slot) + ".sock");
}

bool is_valid_handle(std::string_view handle) {
    static const std::regex kHandle("^[a-z0-9]+(?:[-.][a-z0-9]+)*$");
    return handle.size() <= 64 && std::regex_match(handle.begin(), handle.end(), kHandle);
}

}  // namespace ensemble::protocol
