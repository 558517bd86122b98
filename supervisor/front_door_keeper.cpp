#include "supervisor/front_door_keeper.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include "protocol/worker_contract.h"
#include "supervisor/worker_spawner.h"

namespace ensemble {

namespace {

// Its clients wait in the backlog meanwhile: a front door costs little to start again.
constexpr auto kMaxBackoff = std::chrono::milliseconds(8000);
constexpr auto kHealthyAfter = std::chrono::seconds(60);
// After a restart of ensembled, a front door that outlived it registers within a second or so
// (it retries every 500 ms); the port is not taken from it meanwhile.
constexpr auto kAdoptionGrace = std::chrono::seconds(10);

// Where the front door reaches the model ports: their bind host, or loopback for a wildcard.
std::string reachable(const std::string& bind_host) {
    if (bind_host == "0.0.0.0" || bind_host.empty()) return "127.0.0.1";
    if (bind_host == "::") return "::1";
    return bind_host;
}

}  // namespace

FrontDoorKeeper::FrontDoorKeeper(asio::io_context& io, Fleet& fleet,
                                 std::filesystem::path worker_binary,
                                 std::filesystem::path link_socket)
    : io_(io),
      fleet_(fleet),
      worker_binary_(std::move(worker_binary)),
      link_socket_(std::move(link_socket)) {}

void FrontDoorKeeper::event(const std::string& message) {
    const auto& door = fleet_.config().supervisor.front_door;
    fleet_.record_event(door ? door->port : 0, "front_door", message);
}

const FrontDoorSettings& FrontDoorKeeper::settings() const {
    return *fleet_.config().supervisor.front_door;
}

void FrontDoorKeeper::start() {
    if (!fleet_.config().supervisor.front_door) return;
    bind_deadline_ = Clock::now() + kAdoptionGrace;
    tick();
}

void FrontDoorKeeper::tick() {
    const auto now = Clock::now();
    if (child_) {
        if (const auto exit = child_->poll_exit()) {
            const bool healthy = now - started_ >= kHealthyAfter;
            backoff_ = healthy ? std::chrono::milliseconds(1000)
                               : std::min(backoff_ * 2, std::chrono::milliseconds(kMaxBackoff));
            next_start_ = now + backoff_;
            if (!stopping_) {
                ++restarts_;
                event(
                    "front door (pid " + std::to_string(child_->pid()) + ") exited (" +
                    exit->describe() + "); starting it again in " +
                    std::to_string(backoff_.count()) + " ms (see " +
                    (protocol::log_folder(fleet_.config().supervisor.state_dir) / "front-door.log")
                        .string() +
                    ")");
            }
            child_.reset();
        }
    }
    const auto& door = fleet_.config().supervisor.front_door;
    if (!door || stopping_) return;
    send_routes();
    if (child_ || peer_ != nullptr || now < next_start_) return;
    if (!socket_.is_open()) {
        auto opened = ListeningSocket::open(door->host, door->port);
        if (!opened) {
            // Held by a front door of an earlier ensembled: it hands it back when it registers.
            if (now < bind_deadline_) return;
            event("cannot listen on " + door->host + ":" + std::to_string(door->port) + ": " +
                  opened.error().message + "; trying again in 30 s");
            next_start_ = now + std::chrono::seconds(30);
            return;
        }
        socket_ = std::move(opened).value();
    }
    spawn();
}

std::vector<std::string> FrontDoorKeeper::arguments() const {
    const auto& door = settings();
    std::vector<std::string> argv{
        "--front-door",
        "--port",
        std::to_string(door.port),
        "--host",
        door.host,
        "--ports-host",
        reachable(fleet_.config().supervisor.bind_host),
        "--queue-max",
        std::to_string(door.queue_max),
        "--load-timeout",
        std::to_string(std::chrono::ceil<std::chrono::seconds>(door.load_timeout).count()),
        "--drain-timeout",
        std::to_string(fleet_.config().supervisor.health.drain_timeout.count() / 1000.0)};
    protocol::append_port_limit_options(argv, fleet_.config().supervisor.port_limits);
    return argv;
}

void FrontDoorKeeper::spawn() {
    const auto& door = settings();
    const auto& supervisor = fleet_.config().supervisor;
    token_ = random_token();
    SpawnSpec spec;
    spec.argv = {worker_binary_.string()};
    for (auto& argument : arguments())
        spec.argv.push_back(std::move(argument));
    spec.log_file = protocol::log_folder(supervisor.state_dir) / "front-door.log";
    spec.die_with_parent = false;  // it serves on through a restart of ensembled
    spec.passed_fd = socket_.fd();
    spec.extra_env = {{protocol::kSupervisorSocketVariable, link_socket_.string()},
                      {protocol::kWorkerIdVariable, "front-door-" + token_.substr(0, 8)},
                      {protocol::kWorkerTokenVariable, token_},
                      {protocol::kListenFdVariable, std::to_string(protocol::kListenFd)}};
    auto child = ChildProcess::spawn(spec);
    started_ = Clock::now();
    if (!child) {
        event("cannot start " + worker_binary_.string() + ": " + child.error().message);
        backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(kMaxBackoff));
        next_start_ = started_ + backoff_;
        return;
    }
    child_ = std::move(child).value();
    event("started (pid " + std::to_string(child_->pid()) + ") on " + door.host + ":" +
          std::to_string(door.port));
}

void FrontDoorKeeper::stop() {
    stopping_ = true;
    if (peer_ != nullptr) {
        peer_->send(protocol::stop_message());
    } else if (child_) {
        child_->signal_group(SIGTERM);
    }
}

Status FrontDoorKeeper::on_register(WorkerLinkPeer* peer, const protocol::Register& message,
                                    std::optional<ListeningSocket> socket) {
    const auto& door = fleet_.config().supervisor.front_door;
    if (!door || stopping_) {
        return Error{"no_front_door",
                     "this ensembled runs no front door (supervisor.front_door "
                     "is not set); stop"};
    }
    if (message.port != door->port) {
        return Error{"front_door_moved", "the front door is now on port " +
                                             std::to_string(door->port) + ", not " +
                                             std::to_string(message.port) + "; stop"};
    }
    const bool ours = child_ && message.token == token_ && message.pid == child_->pid();
    if (!ours) {
        // One that outlived the last ensembled is kept, with the socket it hands back; any
        // other is told to stop.
        if (child_ || peer_ != nullptr || !socket) {
            return Error{"front_door_exists",
                         "another front door serves port " + std::to_string(door->port) +
                             (socket ? "" : ", and this one did not hand its socket back") +
                             "; stop"};
        }
        socket_ = std::move(*socket);
        std::string wanted;
        for (const auto& argument : arguments())
            wanted += (wanted.empty() ? "" : " ") + argument;
        if (message.settings != wanted) {
            // Its socket is kept; it drains, and one with the config's settings starts at once.
            next_start_ = Clock::now();
            event("the front door still serving from before ensembled started (pid " +
                  std::to_string(message.pid) + ") runs with '" + message.settings +
                  "', the config says '" + wanted + "': it is stopped and a new one started");
            return Error{
                "front_door_outdated",
                "ensembled's config gives the front door other settings ('" + wanted + "'); stop"};
        }
        fleet_.record_event(door->port, "front_door_kept",
                            "kept the front door still serving from before ensembled started "
                            "(pid " +
                                std::to_string(message.pid) + ")");
    }
    peer_ = peer;
    linked_pid_ = message.pid;
    linked_at_ = Clock::now();
    last_routes_ = nullptr;
    send_routes();
    return Ok{};
}

void FrontDoorKeeper::on_link_closed(WorkerLinkPeer* peer) {
    if (peer != peer_) return;
    peer_ = nullptr;
    // Ours: its exit is reaped and it is started again. Adopted: give it a moment to come
    // back before another is started on the socket it handed back.
    if (!child_) next_start_ = Clock::now() + std::chrono::seconds(3);
}

std::string_view to_string(FrontDoorState state) {
    switch (state) {
        case FrontDoorState::serving:
            return "serving";
        case FrontDoorState::starting:
            return "starting";
        case FrontDoorState::restarting:
            return "restarting";
        case FrontDoorState::waiting:
            return "waiting";
        case FrontDoorState::stopping:
            return "stopping";
        case FrontDoorState::stopped:
            return "stopped";
    }
    return "unknown";
}

FrontDoorReport FrontDoorKeeper::report() const {
    const auto& door = settings();
    FrontDoorReport report;
    report.listen = door.host + ":" + std::to_string(door.port);
    report.restarts = restarts_;
    report.loads_asked = demands_.size();
    if (peer_ != nullptr) {
        report.state = stopping_ ? FrontDoorState::stopping : FrontDoorState::serving;
        report.pid = linked_pid_;
        report.uptime_s =
            std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - linked_at_).count();
    } else if (child_) {
        report.state = stopping_ ? FrontDoorState::stopping
                                 : FrontDoorState::starting;  // started, not linked yet
        report.pid = child_->pid();
    } else if (!socket_.is_open()) {
        // For its port: a front door kept from before hands it back, or another program holds
        // it (then an event says so).
        report.state = FrontDoorState::waiting;
    } else {
        report.state = stopping_ ? FrontDoorState::stopped : FrontDoorState::restarting;
    }
    return report;
}

void FrontDoorKeeper::send_routes() {
    if (peer_ == nullptr) return;
    auto routes = protocol::routes_message(fleet_.routes());
    if (routes == last_routes_) return;
    last_routes_ = routes;
    peer_->send(routes);
}

void FrontDoorKeeper::on_demand(WorkerLinkPeer* peer, const protocol::Demand& demand) {
    if (peer != peer_) return;
    if (!demands_.insert(demand.model).second) return;  // being loaded: one answer for all
    asio::co_spawn(io_, this->demand(demand.model), asio::detached);
}

void FrontDoorKeeper::on_keep_alive(WorkerLinkPeer* peer, const protocol::KeepAlive& keep_alive) {
    if (peer != peer_) return;
    if (fleet_.keep_alive(keep_alive)) send_routes();  // its expiry changed
}

awaitable<void> FrontDoorKeeper::demand(std::string handle) {
    co_await fleet_.wait_turn();
    auto loaded = co_await fleet_.load_on_demand(handle);
    fleet_.end_turn();
    demands_.erase(handle);
    protocol::DemandResult result{handle, std::nullopt};
    if (!loaded) result.refusal = loaded.error();
    send_routes();
    if (peer_ != nullptr) peer_->send(protocol::demand_result_message(result));
}

}  // namespace ensemble
