// Runs one engine as the worker's child: starts it on a private Unix socket (or, for engines that
// cannot listen on one, a free loopback port), waits for its
// readiness probe, restarts it when it dies (immediately the first time, then with exponential
// backoff), and stops it. Requests wait for readiness through `wait_ready`.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "os/asio.h"
#include "os/child_process.h"
#include "os/http_probe.h"
#include "os/memory_kill_watch.h"
#include "os/recorded_process.h"
#include "os/stream_endpoint.h"
#include "profiles/command_template.h"
#include "worker/engine_config.h"
#include "worker/proxy_target.h"

namespace ensemble {

enum class EngineState { loading, ready, restarting, stopping, stopped };
const char* to_string(EngineState state);

class EngineRunner final : public ProxyTarget {
  public:
    EngineRunner(asio::io_context& io, EngineConfig config);

    // Called when the engine cannot be loaded at all (it failed kMaxLoadFailures times before it
    // was ever ready): the model or the engine is broken, and retrying forever helps no one.
    std::function<void(const std::string& reason)> on_unloadable;
    static constexpr int kMaxLoadFailures = 3;
    // Called after every state change (the supervisor link reports it at once).
    std::function<void()> on_state_change;
    ~EngineRunner() override;

    // Starts the first engine. An error here (binary missing, log unwritable) is a startup failure.
    Status start();
    // SIGTERM to the engine's group, SIGKILL after the grace period; wakes every waiter.
    awaitable<void> stop();
    // The worker is going down (its drain comes before stop): an engine that exits meanwhile is
    // reaped and its exit recorded, never restarted.
    void end_restarts() { restarts_ended_ = true; }

    // Called on SIGCHLD, or whenever the engine looks dead: reaps it if it exited and schedules
    // a restart. Harmless while it runs.
    void on_child_exit() override;

    // Waits until the engine is ready (true) or the deadline passes / it is stopping (false).
    awaitable<bool> wait_ready(Clock::time_point deadline) override;

    EngineState state() const { return state_; }
    bool ready() const override { return state_ == EngineState::ready; }
    bool ever_ready() const { return ever_ready_; }
    // Where the running engine listens.
    const StreamEndpoint& endpoint() const override { return endpoint_; }
    std::uint64_t generation() const override { return generation_; }  // one per engine process
    std::size_t waiting() const { return waiters_.size(); }
    int restarts() const { return restarts_; }
    std::optional<pid_t> pid() const;
    // The running engine's pid, start time and process group; nullopt while none runs.
    std::optional<RecordedProcess> running_engine() const;
    // The proxy saw the engine answer a real request (passive health: no probe needed).
    void note_answer() override;
    ApiError unavailable() const override;
    const std::string& last_exit() const { return last_exit_; }
    const std::string& engine_model_id() const { return engine_model_id_; }

  private:
    Status spawn();
    // Chooses where the next engine listens: sets endpoint_, and {socket} or {port} in `vars`.
    Status choose_listen_address(TemplateVars& vars);
    void stop_engine_left_behind();
    // Writes down the engine just forked (it waits to exec until this returns).
    Status record(pid_t pid);
    void forget_record();
    std::chrono::milliseconds probe_timeout() const;
    // SIGKILL to the engine's group, remembering why (so it is not put down to memory).
    void kill_engine(const std::string& reason);
    HttpProbe readiness_probe() const;
    awaitable<void> watch_readiness(std::uint64_t generation);
    awaitable<void> watch_liveness(std::uint64_t generation);
    awaitable<void> restart_after(std::chrono::milliseconds delay, std::uint64_t generation);
    std::chrono::milliseconds next_backoff();
    void set_state(EngineState state, const std::string& reason);
    void wake_waiters();

    asio::io_context& io_;
    EngineConfig config_;
    std::string engine_model_id_;
    std::unique_ptr<ChildProcess> child_;
    std::optional<RecordedProcess> record_;    // of child_, while it runs
    std::unique_ptr<RecordFile> record_file_;  // held for as long as this worker runs
    EngineState state_ = EngineState::stopped;
    bool ever_ready_ = false;
    std::string kill_reason_;            // why we killed the engine that runs now, if we did
    steady_timer* exit_wake_ = nullptr;  // stop()'s wait for the engine's exit, while it waits
    bool restarts_ended_ = false;
    Clock::time_point last_answer_{};
    MemoryKillWatch memory_kills_;
    StreamEndpoint endpoint_ = StreamEndpoint::tcp(asio::ip::address_v4::loopback(), 0);
    std::uint64_t generation_ = 0;
    std::uint64_t exit_handled_ = 0;  // the generation whose exit on_child_exit acted on
    int restarts_ = 0;
    int consecutive_failures_ = 0;
    int load_failures_ = 0;
    Clock::time_point ready_since_{};
    std::string last_exit_;
    std::vector<steady_timer*> waiters_;
};

}  // namespace ensemble
