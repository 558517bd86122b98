// ensembled: the supervisor. Reads the config, owns state.db, listens on control.sock and
// workers.sock, and keeps the fleet matching the desired assignments.
//
// SIGTERM/SIGINT: drain and stop every worker, keep the assignments (the next start restores
// them). SIGQUIT: exit at once and leave the workers serving, to be re-adopted by the next
// ensembled (upgrades). A crash or kill -9 behaves like SIGQUIT.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <boost/asio/signal_set.hpp>
#include <iostream>

#include "os/asio.h"
#include "os/child_process.h"
#include "os/descriptor_limit.h"
#include "os/private_folder.h"
#include "protocol/framing.h"
#include "supervisor/logging.h"
#include "supervisor/service_manager.h"
#include "supervisor/socket_servers.h"
#include "supervisor/status_http.h"
#include "supervisor/worker_spawner.h"

using namespace ensemble;

namespace {

// The service manager's status line (systemctl status), sent when it changes.
void update_status_line(const Fleet& fleet) {
    static std::string sent;
    auto line = fleet.summary();
    if (line == sent) return;
    service_manager::status(line);
    sent = std::move(line);
}

void tick_forever(steady_timer& timer, Fleet& fleet, FrontDoorKeeper& front_door) {
    timer.expires_after(std::chrono::milliseconds(500));
    timer.async_wait([&timer, &fleet, &front_door](boost::system::error_code ec) {
        if (ec) return;
        fleet.tick();
        front_door.tick();
        update_status_line(fleet);
        tick_forever(timer, fleet, front_door);
    });
}

// Pings systemd's watchdog from the event loop, so a wedged loop is restarted.
void watchdog_forever(steady_timer& timer, std::chrono::milliseconds every) {
    timer.expires_after(every);
    timer.async_wait([&timer, every](boost::system::error_code ec) {
        if (ec) return;
        service_manager::watchdog();
        watchdog_forever(timer, every);
    });
}

}  // namespace

int main(int argc, char** argv) {
    reserve_standard_descriptors();  // before any socket can take 0, 1 or 2
    // First: a write to a peer that is gone (a client, a held child) is an error, not death.
    ::signal(SIGPIPE, SIG_IGN);
    std::string config_path;
    std::string worker_bin;
    std::string log_file;
    CLI::App app{"ensembled: keeps a fleet of model workers the way the profile says"};
    app.add_option("--config,-c", config_path, "configuration file (YAML)")->required();
    app.add_option("--worker-bin", worker_bin,
                   "ensemble-worker to run (default: next to ensembled)");
    app.add_option("--log-file", log_file,
                   "log to this file, rotated by the config's logs settings (default: stderr; "
                   "under systemd, the journal)");
    CLI11_PARSE(app, argc, argv);
    configure_logging("ensembled", "", {});

    auto loaded = load_config(config_path);
    if (!loaded.config) {
        for (const auto& issue : loaded.issues)
            std::cerr << issue.to_string() << '\n';
        std::cerr << "ensembled: the configuration has " << loaded.issues.size()
                  << " error(s); nothing was started\n";
        return 2;
    }
    auto config = std::move(*loaded.config);
    if (!log_file.empty()) {
        try {
            configure_logging("ensembled", log_file, config.supervisor.logs);
        } catch (const std::exception& e) {
            std::cerr << "ensembled: cannot log to " << log_file << ": " << e.what() << '\n';
            return 1;
        }
    }
    // Records found here are acted on (state.db, the engine records beside the logs).
    for (const auto& folder :
         {config.supervisor.state_dir, protocol::log_folder(config.supervisor.state_dir)}) {
        if (auto ok = check_private_folder(folder); !ok) {
            spdlog::error("the state folder: {}", ok.error().message);
            return 1;
        }
    }
    auto store = StateStore::open(config.supervisor.state_dir / "state.db");
    if (!store) {
        spdlog::error("{}", store.error().message);
        return 1;
    }
    // Descriptors for every worker link, control connection, probe, log and spawn.
    spdlog::debug("descriptor limit: {}", raise_descriptor_limit());
    // The longest of the sockets in the run_dir: each port's engine's.
    const auto longest_socket =
        protocol::engine_socket(config.supervisor.run_dir, 65535, protocol::kSlots - 1);
    if (auto fits = protocol::check_socket_path(longest_socket.string()); !fits) {
        spdlog::error("{}", fits.error().message);
        return 1;
    }
    asio::io_context io(event_loop_config());
    auto control = listen_unix(io, config.supervisor.run_dir, "control.sock");
    if (!control) {
        spdlog::error("{}", control.error().message);
        return 1;
    }
    auto links = listen_unix(io, config.supervisor.run_dir, "workers.sock");
    if (!links) {
        spdlog::error("{}", links.error().message);
        return 1;
    }
    const auto link_path = config.supervisor.run_dir / "workers.sock";
    const std::filesystem::path worker_binary = worker_bin.empty()
                                                    ? WorkerSpawner::default_worker_binary()
                                                    : std::filesystem::path(worker_bin);
    WorkerSpawner spawner(worker_binary, link_path);
    Fleet fleet(io, std::move(config), std::move(store).value(), std::move(spawner));
    ControlApi api(fleet);
    FrontDoorKeeper front_door(io, fleet, worker_binary, link_path);
    fleet.on_change = [&front_door] { front_door.send_routes(); };
    fleet.front_door_report = [&front_door] { return front_door.report(); };
    serve_control(io, **control, api);
    serve_worker_links(io, **links, fleet, front_door);
    std::unique_ptr<StatusHttp> status_http;
    if (const auto& http = fleet.config().supervisor.http) {
        std::string token;
        if (!http->token_file.empty()) {
            auto read = read_status_token(http->token_file);
            if (!read) {
                spdlog::error("{}", read.error().message);
                return 1;
            }
            token = std::move(*read);
        }
        status_http = std::make_unique<StatusHttp>(io, *http, std::move(token), fleet);
        if (auto listening = status_http->listen(); !listening) {
            spdlog::error("{}", listening.error().message);
            return 1;
        }
        status_http->start();
        spdlog::info(
            "status page and metrics on http://{}:{}/{}",
            http->host.find(':') == std::string::npos ? http->host : "[" + http->host + "]",
            status_http->bound_port(), http->token_file.empty() ? "" : " (token required)");
    }

    signal_set children(io, SIGCHLD);
    on_every_signal(children, [&fleet, &front_door] {
        fleet.tick();
        front_door.tick();
    });
    steady_timer ticker(io);
    tick_forever(ticker, fleet, front_door);
    fleet.reconcile();
    front_door.start();
    spdlog::info("ready: control {}, {} port(s)",
                 (fleet.config().supervisor.run_dir / "control.sock").string(), fleet.size());
    service_manager::ready(fleet.summary());
    steady_timer watchdog(io);
    if (auto every = service_manager::watchdog_interval()) watchdog_forever(watchdog, *every);

    signal_set stop(io, SIGTERM, SIGINT, SIGQUIT);
    stop.async_wait([&](boost::system::error_code ec, int signal) {
        if (ec) return;
        auto finish = [&] {
            boost::system::error_code ignored;
            (*control)->close(ignored);
            (*links)->close(ignored);
            if (status_http) status_http->stop();
            std::filesystem::remove(fleet.config().supervisor.run_dir / "control.sock");
            std::filesystem::remove(fleet.config().supervisor.run_dir / "workers.sock");
            io.stop();
        };
        if (signal == SIGQUIT) {
            spdlog::info("SIGQUIT: exiting, workers keep serving");
            finish();
            return;
        }
        spdlog::info("stopping every worker (assignments are kept for the next start)");
        service_manager::stopping();
        front_door.stop();
        asio::co_spawn(
            io,
            [&fleet, finish]() -> awaitable<void> {
                co_await fleet.stop_all(std::chrono::seconds(60));
                finish();
            },
            asio::detached);
    });
    io.run();
    return 0;
}
