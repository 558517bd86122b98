// The `ensemble` CLI's connection to control.sock: one request, one reply, blocking.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "protocol/messages.h"

namespace ensemble {

// The config file: --config, else $ENSEMBLE_CONFIG, else "" (none given).
std::string config_path(const std::string& config_option);

// Where control.sock is: --socket, else $ENSEMBLE_SOCKET, else the config's run_dir (from
// --config or $ENSEMBLE_CONFIG), else the default run directory.
Result<std::filesystem::path> control_socket_path(const std::string& socket_option,
                                                  const std::string& config_option);

// The reply, or an error saying that the supervisor is not running and how to start it.
Result<nlohmann::json> call_supervisor(const std::filesystem::path& socket,
                                       const protocol::ControlRequest& request);

}  // namespace ensemble
