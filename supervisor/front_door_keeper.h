// Keeps the front door (supervisor.front_door) running: holds its listening socket, starts
// `ensemble-worker --front-door` on it, restarts it when it exits (with backoff), sends it the
// routes whenever they change, and carries out its demands (loads on demand, one at a time,
// through the fleet). The front door is not killed with ensembled: after a restart of ensembled
// it registers again, hands its socket back, and is kept.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "os/child_process.h"
#include "os/listening_socket.h"
#include "profiles/config.h"
#include "protocol/messages.h"
#include "supervisor/fleet.h"

namespace ensemble {

class FrontDoorKeeper {
  public:
    using Clock = std::chrono::steady_clock;

    FrontDoorKeeper(asio::io_context& io, Fleet& fleet, std::filesystem::path worker_binary,
                    std::filesystem::path link_socket);

    // Binds the port and starts the front door, or, when the port is held (by a front door
    // that outlived the last ensembled, say), waits for one to register with it.
    void start();
    // Once a second: restarts an exited front door, sends routes that changed.
    void tick();
    // Stops the front door (ensembled is stopping): it drains.
    void stop();

    // workers.sock: a registration that says it is the front door.
    Status on_register(WorkerLinkPeer* peer, const protocol::Register& message,
                       std::optional<ListeningSocket> socket);
    void on_demand(WorkerLinkPeer* peer, const protocol::Demand& demand);
    void on_keep_alive(WorkerLinkPeer* peer, const protocol::KeepAlive& keep_alive);
    void on_link_closed(WorkerLinkPeer* peer);

    // The routes changed (Fleet::on_change): sent at once.
    void send_routes();

    // For status: where it stands (Fleet::front_door_report).
    FrontDoorReport report() const;

  private:
    const FrontDoorSettings& settings() const;
    // In the fleet's event log (kind "front_door"), and ensembled's log.
    void event(const std::string& message);
    void spawn();
    // The front door's command line after the program, from the config.
    std::vector<std::string> arguments() const;
    awaitable<void> demand(std::string handle);

    asio::io_context& io_;
    Fleet& fleet_;
    std::filesystem::path worker_binary_;
    std::filesystem::path link_socket_;
    ListeningSocket socket_;
    std::unique_ptr<ChildProcess> child_;
    std::string token_;  // the running child's one-time token
    WorkerLinkPeer* peer_ = nullptr;
    nlohmann::json last_routes_;
    std::set<std::string> demands_;  // handles being loaded for the front door
    Clock::time_point next_start_{};
    Clock::time_point started_{};
    Clock::time_point bind_deadline_{};  // waiting for a front door to hand the socket back
    std::chrono::milliseconds backoff_{1000};
    int linked_pid_ = 0;             // the front door linked now (ours, or kept)
    Clock::time_point linked_at_{};  // when it linked
    int restarts_ = 0;
    bool stopping_ = false;
};

}  // namespace ensemble
