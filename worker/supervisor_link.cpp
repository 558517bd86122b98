#include "worker/supervisor_link.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <boost/asio/write.hpp>
#include <cstdlib>

#include "os/descriptor_passing.h"
#include "os/stream_reads.h"
#include "protocol/framing.h"
#include "protocol/worker_contract.h"

namespace ensemble {

namespace {
using Clock = std::chrono::steady_clock;
}

std::optional<LinkConfig> LinkConfig::from_environment(int port, const std::string& handle) {
    const char* socket = std::getenv(protocol::kSupervisorSocketVariable);
    const char* id = std::getenv(protocol::kWorkerIdVariable);
    const char* token = std::getenv(protocol::kWorkerTokenVariable);
    if (socket == nullptr || id == nullptr || token == nullptr) return std::nullopt;
    if (!protocol::check_socket_path(socket))
        return std::nullopt;  // the supervisor refuses such paths too
    LinkConfig c;
    c.socket_path = socket;
    c.worker_id = id;
    c.token = token;
    c.port = port;
    c.handle = handle;
    // The engine is not ours to trust with the worker's credentials: it does not inherit them.
    ::unsetenv(protocol::kWorkerTokenVariable);
    if (const char* grace = std::getenv(protocol::kOrphanGraceVariable)) {
        c.orphan_grace = std::chrono::milliseconds(std::strtoll(grace, nullptr, 10));
    }
    if (const char* files = std::getenv(protocol::kWorkerFilesVariable)) c.files = files[0] == '1';
    return c;
}

SupervisorLink::SupervisorLink(asio::io_context& io, LinkConfig config, StatsSource stats,
                               StopHandler on_stop, ServeHandler on_serve)
    : io_(io),
      config_(std::move(config)),
      stats_(std::move(stats)),
      on_stop_(std::move(on_stop)),
      on_serve_(std::move(on_serve)),
      socket_(io),
      heartbeat_timer_(io) {}

void SupervisorLink::report_now() {
    // Asked while a beat is being made or written, there is no wait yet for the cancel to end:
    // the flag keeps the request for the loop.
    report_due_ = true;
    heartbeat_timer_.cancel();
}

void SupervisorLink::start() {
    asio::co_spawn(io_, run(), asio::detached);
}

bool SupervisorLink::post(nlohmann::json message) {
    if (!connected_) return false;
    outbox_.push_back(std::move(message));
    heartbeat_timer_.cancel();
    return true;
}

void SupervisorLink::stop() {
    // The heartbeat loop sends a last report (why the engine stopped, say) and closes the link.
    stopping_ = true;
    heartbeat_timer_.cancel();
}

awaitable<bool> SupervisorLink::send(const nlohmann::json& message) {
    const auto frame = protocol::encode_frame(message);
    boost::system::error_code ec;
    co_await asio::async_write(socket_, asio::buffer(frame), on_error(ec));
    co_return !ec;
}

awaitable<bool> SupervisorLink::send_hello(const nlohmann::json& hello) {
    const auto frame = protocol::encode_frame(hello);
    std::size_t sent = 0;
    boost::system::error_code ec;
    // A worker standing by is not (yet) one the port's socket is to be had back from.
    while (config_.listen_fd && !config_.standby) {
        co_await socket_.async_wait(asio::socket_base::wait_write, on_error(ec));
        if (ec) co_return false;
        auto n = send_with_descriptor(socket_.native_handle(), frame, *config_.listen_fd);
        if (n) {
            sent = *n;
            break;
        }
        if (n.error().code != "would_block") {
            // The socket is gone (drained, say): register without it.
            spdlog::debug("link: cannot hand the port's socket back: {}", n.error().message);
            break;
        }
    }
    const std::string_view rest = std::string_view(frame).substr(sent);
    if (!rest.empty()) co_await asio::async_write(socket_, asio::buffer(rest), on_error(ec));
    co_return !ec;
}

awaitable<void> SupervisorLink::run() {
    // A worker standing by retries its first connection this long (the socket's backlog may be
    // full for a moment), then gives up: nobody knows of it.
    constexpr auto kStandbyFirstContact = std::chrono::seconds(10);
    const auto started = Clock::now();
    bool registered_once = false;
    auto last_contact = Clock::now();
    steady_timer timer(io_);
    boost::system::error_code ec;
    while (!stopping_) {
        // Closed, the socket is opened again by the connect (a fresh one each attempt).
        boost::system::error_code ignored;
        socket_.close(ignored);
        const asio::local::stream_protocol::endpoint supervisor(config_.socket_path);
        co_await socket_.async_connect(supervisor, on_error(ec));
        if (!ec) {
            // No temporaries inside co_await expressions: GCC 12 may destroy them twice.
            const auto hello = protocol::to_json(protocol::Register{
                config_.worker_id, config_.token, config_.port, ::getpid(), protocol::kVersion,
                config_.handle, config_.files, config_.front_door, config_.settings});
            const bool registered = co_await send_hello(hello);
            if (registered) {
                registered_once = true;
                spdlog::info("link: connected to the supervisor at {}", config_.socket_path);
                reader_running_ = true;
                asio::co_spawn(io_, read_loop(), asio::detached);
                connected_ = true;
                if (on_connection) on_connection(true);
                while (socket_.is_open() && !stopping_) {
                    last_contact = Clock::now();
                    bool sent = true;
                    while (sent && !outbox_.empty()) {
                        const auto message = std::move(outbox_.front());
                        outbox_.pop_front();
                        sent = co_await send(message);
                    }
                    if (!sent) break;
                    report_due_ = false;  // this beat is the report
                    const auto stats = stats_();
                    const auto heartbeat = protocol::to_json(protocol::Heartbeat{stats});
                    if (!co_await send(heartbeat)) break;
                    // A load's progress is worth telling more often than the steady state.
                    const bool loading = stats.state == "loading" || stats.state == "restarting";
                    // A message posted or a report asked for while this loop was writing goes
                    // out now, not a beat later (its cancel of the timer came before the wait).
                    if (!outbox_.empty() || std::exchange(report_due_, false)) continue;
                    heartbeat_timer_.expires_after(loading ? config_.loading_heartbeat_interval
                                                           : config_.heartbeat_interval);
                    co_await heartbeat_timer_.async_wait(on_error(ec));
                }
                if (stopping_ && socket_.is_open()) {
                    // The last word before exiting: the supervisor reports the true reason
                    // (the engine's last exit) rather than an exit code alone.
                    const auto last = protocol::to_json(protocol::Heartbeat{stats_()});
                    co_await send(last);
                }
                socket_.close(ec);
                connected_ = false;
                outbox_.clear();
                if (on_connection) on_connection(false);
                while (reader_running_) {
                    timer.expires_after(std::chrono::milliseconds(10));
                    co_await timer.async_wait(on_error(ec));
                }
                if (!stopping_ && !config_.standby)
                    spdlog::warn("link: lost the supervisor; still serving, reconnecting");
            }
        }
        if (stopping_) break;
        if (config_.standby && (registered_once || Clock::now() - started > kStandbyFirstContact)) {
            // Nobody would ever tell it to serve, and it has served no one.
            on_stop_("no supervisor while standing by for a swap");
            co_return;
        }
        if (Clock::now() - last_contact > config_.orphan_grace) {
            on_stop_("no supervisor for " +
                     std::to_string(
                         std::chrono::duration_cast<std::chrono::seconds>(config_.orphan_grace)
                             .count()) +
                     " s");
            co_return;
        }
        timer.expires_after(std::chrono::milliseconds(500));
        co_await timer.async_wait(on_error(ec));
    }
}

awaitable<void> SupervisorLink::read_loop() {
    protocol::FrameDecoder decoder;
    std::array<char, 4096> buffer{};
    boost::system::error_code ec;
    while (!stopping_) {
        const auto into = asio::buffer(buffer);
        const auto n = co_await read_more(socket_, into, ec);  // (os/stream_reads.h)
        if (ec) break;
        decoder.feed({buffer.data(), n});
        while (auto frame = decoder.next()) {
            if (!*frame) {
                spdlog::warn("link: bad message from the supervisor: {}", frame->error().message);
                continue;
            }
            const auto& message = frame->value();
            // (value() would throw on a message that is not an object or a type that is not
            // a string)
            std::string type;
            if (message.is_object()) {
                const auto t = message.find("type");
                if (t != message.end() && t->is_string()) type = t->get<std::string>();
            }
            if (type == "stop") {
                on_stop_("the supervisor asked to stop");
            } else if (type == "serve" && config_.standby) {
                config_.standby = false;
                if (on_serve_) on_serve_();
            } else if (!type.empty() && type != "registered" && type != "serve" && on_message) {
                on_message(message);
            } else if (message.is_object() && message.contains("ok") && message["ok"] == false) {
                spdlog::error("link: the supervisor refused a message: {}", message.dump());
            }
        }
    }
    socket_.close(ec);
    heartbeat_timer_.cancel();  // the heartbeat loop sees the link gone now, not a beat later
    reader_running_ = false;
}

}  // namespace ensemble
