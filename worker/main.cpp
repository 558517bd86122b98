// ensemble-worker: one port, one model, one engine. Binds the port first, starts the engine,
// proxies the OpenAI API to it, restarts it if it dies, and drains on SIGTERM.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <boost/asio/signal_set.hpp>
#include <iostream>

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

}  // namespace

int main(int argc, char** argv) {
    auto parsed = parse_worker_options(argc, argv);
    if (auto* code = std::get_if<int>(&parsed)) return *code;
    auto& options = std::get<WorkerOptions>(parsed);
    spdlog::set_pattern(
        "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [worker:" + std::to_string(options.front.port) + "] %v");

    asio::io_context io(1);
    EngineRunner engine(io, options.engine);
    options.model.engine_model_id = engine.engine_model_id();
    EngineProxy proxy(engine, options.proxy);
    HttpFront front(io, options.front, options.model, engine, proxy);

    // The port is held before the engine starts, so clients get 503 while it loads, not refused.
    if (auto ok = front.listen(); !ok) {
        spdlog::error("{}", ok.error().message);
        return 3;
    }
    asio::signal_set children(io, SIGCHLD);
    std::function<void()> watch_children = [&] {
        children.async_wait([&](boost::system::error_code ec, int) {
            if (ec) return;
            engine.on_child_exit();
            watch_children();
        });
    };
    watch_children();
    if (auto ok = engine.start(); !ok) {
        spdlog::error("cannot start the engine: {}", ok.error().message);
        return 4;
    }
    front.start_accepting();
    spdlog::info("worker: serving '{}' on {}:{} (engine {} on 127.0.0.1:{})", options.model.handle,
                 options.front.host, front.bound_port(), options.engine.preset.name, engine.port());

    asio::signal_set stop_signals(io, SIGTERM, SIGINT);
    stop_signals.async_wait([&](boost::system::error_code ec, int signal) {
        if (ec) return;
        spdlog::info("worker: received {}", signal == SIGTERM ? "SIGTERM" : "SIGINT");
        children.cancel();
        asio::co_spawn(io, shut_down(io, front, engine, options.drain_timeout), asio::detached);
    });
    ::signal(SIGPIPE, SIG_IGN);
    io.run();
    return 0;
}
