// Starts one ensemble-worker for a port: builds its command line from the config (model, engine,
// per-port overrides), gives it an id and a one-time token in its environment, and puts its
// stderr in the port's log. Workers are not killed with the supervisor: a new supervisor re-adopts
// them.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "os/child_process.h"
#include "profiles/config.h"
#include "protocol/worker_contract.h"
#include "supervisor/system.h"

namespace ensemble {

class WorkerSpawner final : public WorkerLauncher {
  public:
    WorkerSpawner(std::filesystem::path worker_binary, std::filesystem::path link_socket)
        : worker_binary_(std::move(worker_binary)), link_socket_(std::move(link_socket)) {}

    // The command line and identity for `port` serving `handle` (pure: no process started).
    // `overrides` are the profile's per-port context/parallel, if any.
    Result<WorkerLaunch> plan(const Config& config, int port, const std::string& handle,
                              const PortAssignment* overrides,
                              const WorkerSlot& slot) const override;
    Result<SpawnedWorker> spawn(const Config& config, int port, const std::string& handle,
                                const PortAssignment* overrides, const ListeningSocket& listening,
                                WorkerSlot slot) const override;

    // The ensemble-worker next to this executable, or in the build tree, or on PATH.
    static std::filesystem::path default_worker_binary();

  private:
    std::filesystem::path worker_binary_;
    std::filesystem::path link_socket_;
};

std::string random_token();

// A port's files, for a supervisor with this state folder (protocol/worker_contract.h).
protocol::PortFiles port_files_in(const std::filesystem::path& state_dir, int port, int files = 0);

}  // namespace ensemble
