// The worker's side of workers.sock: registers with the id and one-time token it was started
// with, sends a heartbeat with its stats every second (four times a second while its engine
// loads), and obeys `stop` and `serve`. If the supervisor goes away the worker keeps serving
// and reconnects; only after `orphan_grace` with no supervisor does it shut itself down.
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <string>

#include "os/asio.h"
#include "protocol/messages.h"

namespace ensemble {

struct LinkConfig {
    std::string socket_path;
    std::string worker_id;
    std::string token;
    int port = 0;
    std::string handle;  // the model served, said when registering
    int files = 0;       // its set of the port's files (protocol::kWorkerFilesVariable)
    // The port's listening socket ensembled passed (descriptor 3), handed back with each
    // registration: a new ensembled, after a restart, then holds the port too.
    std::optional<int> listen_fd;
    // A swap's incoming worker (WorkerOptions::standby) until ensembled says `serve`: losing
    // ensembled meanwhile stops it, since nobody would ever tell it to serve.
    bool standby = false;
    // The front door (protocol::Register::front_door): it registers as such, with its
    // command line (Register::settings).
    bool front_door = false;
    std::string settings;
    std::chrono::milliseconds heartbeat_interval{1000};
    // While the engine loads: its progress, four times a second.
    std::chrono::milliseconds loading_heartbeat_interval{250};
    std::chrono::milliseconds orphan_grace{std::chrono::minutes(5)};

    // From ENSEMBLE_SUPERVISOR_SOCKET, ENSEMBLE_WORKER_ID, ENSEMBLE_WORKER_TOKEN (the token is
    // then removed from the environment, so the engine does not inherit it); nullopt when the
    // worker runs standalone. Read before the engine starts.
    static std::optional<LinkConfig> from_environment(int port, const std::string& handle);
};

class SupervisorLink {
  public:
    using StatsSource = std::function<protocol::WorkerStats()>;
    using StopHandler = std::function<void(const std::string& reason)>;
    using ServeHandler = std::function<void()>;
    // Any other message from the supervisor (the front door's routes and demand results).
    using MessageHandler = std::function<void(const nlohmann::json& message)>;
    // The link is up (registered) or down.
    using ConnectionHandler = std::function<void(bool connected)>;

    SupervisorLink(asio::io_context& io, LinkConfig config, StatsSource stats, StopHandler on_stop,
                   ServeHandler on_serve = {});

    MessageHandler on_message;
    ConnectionHandler on_connection;
    // Sends `message` after what was posted before it; false when no supervisor is connected
    // (nothing is sent, ever).
    bool post(nlohmann::json message);

    void start();
    void report_now();  // send a heartbeat now instead of at the next tick
    void stop();        // ends the link (the worker is shutting down)

  private:
    awaitable<void> run();
    awaitable<void> read_loop();
    awaitable<bool> send(const nlohmann::json& message);
    // The registration, with the port's listening socket attached when there is one.
    awaitable<bool> send_hello(const nlohmann::json& hello);

    asio::io_context& io_;
    LinkConfig config_;
    StatsSource stats_;
    StopHandler on_stop_;
    ServeHandler on_serve_;
    local_socket socket_;
    bool stopping_ = false;
    bool reader_running_ = false;
    bool connected_ = false;
    bool report_due_ = false;            // report_now() since the last beat was made
    std::deque<nlohmann::json> outbox_;  // written by the heartbeat loop, the link's one writer
    steady_timer heartbeat_timer_;
};

}  // namespace ensemble
