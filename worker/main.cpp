// ensemble-worker: one port, one model, one engine. Binds the port first, starts the engine,
// proxies the OpenAI API to it, restarts it if it dies, and drains on SIGTERM. With
// --front-door: the fleet's front door (worker/front_door.h) instead.
#include <signal.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/signal_set.hpp>
#include <iostream>
#include <utility>

#include "os/asio.h"
#include "os/descriptor_limit.h"
#include "os/process_memory.h"
#include "protocol/worker_contract.h"
#include "worker/model_load.h"
#include "worker/supervisor_link.h"
#include "worker/worker_options.h"

using namespace ensemble;

namespace {

awaitable<void> shut_down(asio::io_context& io, HttpFront& front, EngineRunner& engine,
                          std::chrono::milliseconds drain_timeout) {
    spdlog::info("worker: draining ({} requests in flight, up to {} ms)", front.in_flight(),
                 drain_timeout.count());
    co_await front.drain(drain_timeout);
    co_await engine.stop();
    spdlog::info("worker: stopped");
    io.stop();
}

// What a heartbeat says. Memory and a load's progress are measured (reading the engine's
// smaps takes ~10 ms for a 270 MB model) unless `measure` is false: a heartbeat sent at once
// for a change of state carries `last_memory`, so that readiness (which a request loaded on
// demand waits for) reaches the supervisor without that delay; a measured beat follows it at
// once. One with no measure yet measures: a port is never reported as using no memory.
protocol::WorkerStats collect_stats(const EngineRunner& engine, const EngineProxy& proxy,
                                    const std::vector<std::filesystem::path>& model_files,
                                    bool measure, std::uint64_t& last_memory) {
    measure = measure || last_memory == 0;
    protocol::WorkerStats s;
    s.state = to_string(engine.state());
    s.requests = proxy.stats().requests;
    s.failed = proxy.stats().failed;
    s.tokens = proxy.stats().tokens;
    s.queue_depth = static_cast<std::uint32_t>(engine.waiting());
    s.in_flight = static_cast<std::uint32_t>(proxy.stats().active);
    s.engine_restarts = engine.restarts();
    s.engine_last_exit = engine.last_exit();
    s.memory_bytes = measure ? process_footprint(::getpid()).value_or(0) : last_memory;
    if (auto pid = engine.pid()) {
        s.engine_pid = *pid;
        if (measure) {
            s.memory_bytes += process_footprint(*pid).value_or(0);
            if (engine.state() == EngineState::loading || engine.state() == EngineState::restarting)
                measure_load(model_files, *pid, s);
        }
    }
    last_memory = s.memory_bytes;
    if (auto recorded = engine.running_engine()) {  // unless it could not be identified
        s.engine_start_time = recorded->leader.start_time;
        s.engine_group = recorded->group;
    }
    return s;
}

awaitable<void> drain_front_door(asio::io_context& io, FrontDoor& door,
                                 std::chrono::milliseconds timeout) {
    co_await door.drain(timeout);
    io.stop();
}

// The front door (supervisor.front_door): no engine; routes follow what ensembled sends.
int run_front_door(int argc, char** argv) {
    auto parsed = parse_front_door_options(argc, argv);
    if (auto* code = std::get_if<int>(&parsed)) return *code;
    auto& options = std::get<FrontDoorOptions>(parsed);
    spdlog::set_pattern(
        "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [front-door:" + std::to_string(options.door.port) + "] %v");
    const auto descriptors = raise_descriptor_limit();
    // Each forwarded request holds a connection to a model port as well as its client's.
    if (options.door.max_connections > descriptors / 3)
        options.door.max_connections = std::max<std::uint64_t>(descriptors / 3, 1);
    asio::io_context io(event_loop_config());
    FrontDoor door(io, options.door);
    if (auto ok = door.listen(); !ok) {
        spdlog::error("{}", ok.error().message);
        return protocol::exit_code(ok.error().code == "no_listening_socket"
                                       ? protocol::WorkerExit::bad_configuration
                                       : protocol::WorkerExit::port_in_use);
    }
    auto link_config = LinkConfig::from_environment(options.door.port, "");
    if (!link_config) {
        spdlog::error(
            "the front door is started by ensembled (supervisor.front_door), which it learns "
            "its routes from; {} is not set",
            protocol::kSupervisorSocketVariable);
        return protocol::exit_code(protocol::WorkerExit::bad_configuration);
    }
    link_config->listen_fd = options.door.listen_fd;
    link_config->front_door = true;
    for (int i = 1; i < argc; ++i)
        link_config->settings += (i > 1 ? " " : "") + std::string(argv[i]);
    std::unique_ptr<SupervisorLink> link;
    signal_set stop_signals(io, SIGTERM, SIGINT);
    bool shutting_down = false;
    auto begin_shutdown = [&](const std::string& reason) {
        if (shutting_down) return;
        shutting_down = true;
        spdlog::info("front door: stopping: {}", reason);
        stop_signals.cancel();
        if (link) link->stop();
        asio::co_spawn(io, drain_front_door(io, door, options.drain_timeout), asio::detached);
    };
    stop_signals.async_wait([&](boost::system::error_code ec, int signal) {
        if (!ec) begin_shutdown(signal == SIGTERM ? "received SIGTERM" : "received SIGINT");
    });
    link = std::make_unique<SupervisorLink>(
        io, *link_config,
        [] {
            protocol::WorkerStats stats;
            stats.state = "ready";
            return stats;
        },
        begin_shutdown);
    link->on_message = [&](const nlohmann::json& message) {
        if (auto routes = protocol::parse_routes(message)) {
            if (*routes) {
                door.set_routes(std::move(*routes).value());
            } else {
                spdlog::warn("front door: bad routes from ensembled: {}", routes->error().message);
            }
        } else if (auto result = protocol::parse_demand_result(message)) {
            if (*result) {
                door.demand_answered(**result);
            } else {
                spdlog::warn("front door: bad demand result from ensembled: {}",
                             result->error().message);
            }
        }
    };
    link->on_connection = [&](bool connected) { door.set_connected(connected); };
    door.send_to_supervisor = [&](const nlohmann::json& message) { return link->post(message); };
    link->start();
    door.start();
    spdlog::info("front door: serving on {}:{}", options.door.host, door.bound_port());
    io.run();
    return protocol::exit_code(protocol::WorkerExit::ok);
}

}  // namespace

int main(int argc, char** argv) {
    // First: a write to a peer that is gone (a client, a held child) is an error, not death.
    ::signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && std::string_view(argv[1]) == kFrontDoorFlag) return run_front_door(argc, argv);
    auto parsed = parse_worker_options(argc, argv);
    if (auto* code = std::get_if<int>(&parsed)) return *code;
    auto& options = std::get<WorkerOptions>(parsed);
    spdlog::set_pattern(
        "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [worker:" + std::to_string(options.front.port) + "] %v");

    // A public port may hold many client connections at once, but never all the descriptors:
    // each proxied request holds an engine connection too, and the log and the supervisor link
    // need theirs.
    const auto descriptors = raise_descriptor_limit();
    if (options.front.max_connections > descriptors / 3) {
        options.front.max_connections = std::max<std::uint64_t>(descriptors / 3, 1);
        spdlog::info("serving at most {} connections at once (descriptor limit {})",
                     options.front.max_connections, descriptors);
    }
#if defined(__GLIBC__)
    // Request bodies (up to max_body_bytes, and their pinned copies) come and go with every
    // request: glibc would hand such blocks back to the kernel on free and fault them in again
    // for the next request (~1 ms per 1 MB body, docs/BENCHMARKS.md). They are kept and reused
    // instead, so a worker holds on to the heap its largest bursts of bodies needed.
    constexpr std::uint64_t kLargestKept = 32 << 20;  // glibc's ceiling for the threshold
    const auto keep = static_cast<int>(
        std::min<std::uint64_t>(options.front.max_body_bytes, kLargestKept / 4) * 4 + (1 << 20));
    ::mallopt(M_MMAP_THRESHOLD, std::min<int>(keep, kLargestKept));
    ::mallopt(M_TRIM_THRESHOLD, 2 * std::min<int>(keep, kLargestKept));
#endif
    asio::io_context io(event_loop_config());
    EngineRunner engine(io, options.engine);
    options.model.engine_model_id = engine.engine_model_id();
    EngineProxy proxy(engine, options.proxy);
    HttpFront front(io, options.front, options.model, engine, proxy);

    // The port is held before the engine starts, so clients get 503 while it loads, not refused
    // (standalone); a supervised worker's socket is ensembled's, held across workers.
    if (auto ok = front.listen(); !ok) {
        spdlog::error("{}", ok.error().message);
        return protocol::exit_code(ok.error().code == "no_listening_socket"
                                       ? protocol::WorkerExit::bad_configuration
                                       : protocol::WorkerExit::port_in_use);
    }
    auto link_config = LinkConfig::from_environment(options.front.port, options.model.handle);
    if (link_config) {
        link_config->listen_fd = options.front.listen_fd;
        link_config->standby = options.standby;
    }
    signal_set children(io, SIGCHLD);
    on_every_signal(children, [&engine] { engine.on_child_exit(); });
    // Caught (and held until waited for, below) before the engine starts: a SIGTERM in between
    // would end the worker at once and leave its engine running, where no parent-death signal
    // stops it (macOS).
    signal_set stop_signals(io, SIGTERM, SIGINT);
    if (auto ok = engine.start(); !ok) {
        spdlog::error("cannot start the engine: {}", ok.error().message);
        return protocol::exit_code(protocol::WorkerExit::engine_not_started);
    }
    // On a socket the supervisor holds, connections wait in its backlog until the engine is
    // ready (a restart or a swap costs them a wait, not an error); standalone, the worker
    // answers at once, 503 while the engine loads. A swap's incoming worker accepts nothing
    // until ensembled says `serve`: the serving worker answers meanwhile.
    const bool accept_once_ready = options.front.listen_fd.has_value();
    bool accepting = false;
    bool standing_by = options.standby;
    const auto accept_if_due = [&] {
        if (accepting || standing_by || (accept_once_ready && engine.state() != EngineState::ready))
            return;
        accepting = true;
        front.start_accepting();
    };
    // Bounded: a model that takes long to load (or never does) answers 503 after a while rather
    // than keeping its clients in the backlog.
    steady_timer hold_timer(io);
    const auto serve = [&] {
        accept_if_due();
        if (accepting) return;
        hold_timer.expires_after(options.hold_while_loading);
        hold_timer.async_wait([&](boost::system::error_code ec) {
            if (ec || accepting) return;
            spdlog::info(
                "front: the engine is not ready after {} s; answering 503 model_loading "
                "until it is",
                options.hold_while_loading.count());
            accepting = true;
            front.start_accepting();
        });
    };
    if (!standing_by) serve();
    spdlog::info("worker: {} '{}' on {}:{} (engine {} on {})",
                 standing_by ? "standing by to serve" : "serving", options.model.handle,
                 options.front.host, front.bound_port(), options.engine.preset.name,
                 engine.endpoint().describe());

    // One way down, whatever asks for it: SIGTERM/SIGINT, the supervisor, or a long orphanhood.
    std::unique_ptr<SupervisorLink> link;
    bool shutting_down = false;
    auto begin_shutdown = [&](const std::string& reason) {
        if (shutting_down) return;
        shutting_down = true;
        spdlog::info("worker: stopping: {}", reason);
        // SIGCHLD stays watched: it ends the engine's stop the moment the engine exits. An
        // engine that dies during the drain is reaped, not restarted.
        engine.end_restarts();
        stop_signals.cancel();
        if (link) link->stop();
        asio::co_spawn(io, shut_down(io, front, engine, options.drain_timeout), asio::detached);
    };
    stop_signals.async_wait([&](boost::system::error_code ec, int signal) {
        if (!ec) begin_shutdown(signal == SIGTERM ? "received SIGTERM" : "received SIGINT");
    });
    auto exit = protocol::WorkerExit::ok;
    engine.on_unloadable = [&](const std::string& reason) {
        spdlog::error("engine: {}", reason);
        exit = protocol::WorkerExit::model_not_loadable;
        begin_shutdown("the model cannot be loaded");
    };
    const auto files = model_files(options.engine.model);  // outlives the link's reads
    bool state_changed = false;  // since the last heartbeat: the next is sent at once
    std::uint64_t last_memory = 0;
    if (link_config) {
        link = std::make_unique<SupervisorLink>(
            io, *link_config,
            [&] {
                const bool measure = !std::exchange(state_changed, false);
                auto stats = collect_stats(engine, proxy, files, measure, last_memory);
                // The memory of a port just ready, say, is its loaded engine's, not the one
                // measured as it began to load (the next tick may be a second away).
                if (!measure) link->report_now();
                return stats;
            },
            begin_shutdown,
            [&] {
                spdlog::info("worker: told to serve: accepting on the port");
                standing_by = false;
                serve();
            });
        link->start();
    }
    engine.on_state_change = [&] {
        state_changed = true;
        if (link) link->report_now();
        accept_if_due();
    };
    io.run();
    return protocol::exit_code(exit);
}
