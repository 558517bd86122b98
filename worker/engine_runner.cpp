#include "worker/engine_runner.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "os/http_probe.h"
#include "profiles/command_template.h"

namespace ensemble {

namespace {

constexpr auto kFirstBackoff = std::chrono::milliseconds(1000);
constexpr auto kMaxBackoff = std::chrono::milliseconds(60000);
// A failure after this long serving resets the backoff: the next restart is immediate.
constexpr auto kHealthyPeriod = std::chrono::seconds(30);
constexpr auto kProbeTimeout = std::chrono::milliseconds(2000);
constexpr auto kCompletionProbeTimeout = std::chrono::milliseconds(30000);

// A free loopback port for the engine. The engine cannot take a listening socket from us, so
// there is a short window in which another process could take the port; if so the engine fails
// to bind, exits, and is restarted on a new port.
Result<unsigned short> pick_private_port(asio::io_context& io) {
    boost::system::error_code ec;
    tcp_acceptor probe(io);
    probe.open(tcp::v4(), ec);
    if (!ec) probe.bind(tcp::endpoint(asio::ip::address_v4::loopback(), 0), ec);
    if (ec)
        return Error{"no_port", "cannot find a free loopback port for the engine: " + ec.message()};
    return probe.local_endpoint().port();
}

std::uint64_t file_size_or_zero(const std::filesystem::path& path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    return ec ? 0 : size;
}

}  // namespace

const char* to_string(EngineState state) {
    switch (state) {
        case EngineState::loading:
            return "loading";
        case EngineState::ready:
            return "ready";
        case EngineState::restarting:
            return "restarting";
        case EngineState::stopping:
            return "stopping";
        case EngineState::stopped:
            return "stopped";
    }
    return "unknown";
}

EngineRunner::EngineRunner(asio::io_context& io, EngineConfig config)
    : io_(io), config_(std::move(config)) {
    auto id =
        expand_word(config_.preset.engine_model_id, {{"model", config_.model},
                                                     {"handle", config_.handle},
                                                     {"upstream_handle", config_.upstream_handle}});
    engine_model_id_ = id ? *id : config_.handle;
    memory_kills_.watch(io_, std::chrono::seconds(1));
}

EngineRunner::~EngineRunner() = default;

HttpProbe EngineRunner::readiness_probe() const {
    const auto& p = config_.preset.probe;
    if (!p.one_token_completion) return {"GET", p.path, ""};
    const nlohmann::json completion = {
        {"model", engine_model_id_},
        {"messages", nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}})},
        {"max_tokens", 1}};
    return {"POST", p.path,
            completion.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

std::chrono::milliseconds EngineRunner::probe_timeout() const {
    // A completion probe may wait in the engine's queue (behind a load, or other requests):
    // it gets up to the load-stall timeout, at most 30 s, before it counts as unanswered.
    if (!config_.preset.probe.one_token_completion) return kProbeTimeout;
    return std::clamp<std::chrono::milliseconds>(config_.load_stall_timeout, kProbeTimeout,
                                                 kCompletionProbeTimeout);
}

ApiError EngineRunner::unavailable() const {
    const std::string state = state_ == EngineState::ready
                                  ? "not answering"
                                  : std::string("not ready (") + to_string(state_) + ")";
    return {http::status::service_unavailable, "server_error", "engine_unavailable",
            "the engine is " + state + (last_exit_.empty() ? "" : "; last exit: " + last_exit_) +
                "; retry shortly",
            2};
}

void EngineRunner::note_answer() {
    last_answer_ = Clock::now();
}

void EngineRunner::kill_engine(const std::string& reason) {
    if (!child_ || child_->exited()) return;
    kill_reason_ = reason;
    child_->signal_group(SIGCONT);  // a stopped group still dies of SIGKILL; be thorough
    child_->signal_group(SIGKILL);
}

std::optional<pid_t> EngineRunner::pid() const {
    if (!child_ || child_->exited()) return std::nullopt;
    return child_->pid();
}

std::optional<RecordedProcess> EngineRunner::running_engine() const {
    if (!child_ || child_->exited()) return std::nullopt;
    return record_;
}

Status EngineRunner::start() {
    if (!config_.record_file.empty()) {
        auto file = RecordFile::acquire(config_.record_file);
        if (!file && file.error().code == "record_in_use") return file.error();
        if (file) {
            record_file_ = std::move(file).value();
            stop_engine_left_behind();
        } else {
            spdlog::warn(
                "engine: {}; an engine left behind by a crash of this worker would not "
                "be found",
                file.error().message);
        }
    }
    set_state(EngineState::loading, "starting the engine");
    return spawn();
}

void EngineRunner::stop_engine_left_behind() {
    // Its memory is free only once it has exited: wait for that before loading another.
    const auto report =
        record_file_->stop_recorded("the engine an earlier worker left behind", config_.stop_grace);
    if (report.outcome == KillOutcome::gone) {
        spdlog::debug("engine: {}", report.message);
    } else {
        spdlog::warn("engine: {}", report.message);
    }
}

Status EngineRunner::record(pid_t pid) {
    record_ = RecordedProcess::of_running(pid);
    if (!record_) {
        return Error{"spawn_failed", "the engine (pid " + std::to_string(pid) +
                                         ") could not be identified before it ran; not started"};
    }
    if (!record_file_) return Ok{};  // no record file at all (warned at start)
    if (auto ok = record_file_->write(*record_); !ok) {
        // Never an engine that a crash of this worker could leave behind unnoticed.
        return Error{ok.error().code, ok.error().message + "; the engine was not started"};
    }
    return Ok{};
}

void EngineRunner::forget_record() {
    record_.reset();
    if (record_file_) record_file_->clear();
}

Status EngineRunner::choose_listen_address(TemplateVars& vars) {
    if (!config_.socket.empty() && listens_on_socket(config_.preset)) {
        // A socket left by an engine that died: binding would fail on it. (No live engine
        // listens there: the record lock keeps a second worker of this port from starting.)
        // Anything but a socket is not ours to remove.
        std::error_code ec;
        const auto type = std::filesystem::symlink_status(config_.socket, ec).type();
        if (type != std::filesystem::file_type::not_found &&
            type != std::filesystem::file_type::socket) {
            return Error{"socket", config_.socket.string() +
                                       " exists and is not a socket; the engine listens there: "
                                       "move it away or choose another --engine-socket"};
        }
        if (type == std::filesystem::file_type::socket &&
            !std::filesystem::remove(config_.socket, ec) && ec) {
            return Error{"socket", "cannot remove the engine's old socket " +
                                       config_.socket.string() + ": " + ec.message()};
        }
        endpoint_ = StreamEndpoint::unix_socket(config_.socket);
        vars["socket"] = config_.socket.string();
        return Ok{};
    }
    auto port = pick_private_port(io_);
    if (!port) return port.error();
    endpoint_ = StreamEndpoint::tcp(asio::ip::address_v4::loopback(), *port);
    vars["port"] = std::to_string(*port);
    return Ok{};
}

Status EngineRunner::spawn() {
    TemplateVars vars{{"model", config_.model},
                      {"context", std::to_string(config_.context)},
                      {"parallel", std::to_string(config_.parallel)},
                      {"handle", config_.handle}};
    // Only a chained model has them: elsewhere a template using them is "no value for ...".
    if (!config_.upstream_url.empty()) {
        vars["upstream_url"] = config_.upstream_url;
        vars["upstream_handle"] = config_.upstream_handle;
    }
    if (auto ok = choose_listen_address(vars); !ok) return ok;
    auto args = expand_argv(config_.preset.args, vars);
    if (!args) return args.error();
    const auto& preset = config_.preset;
    auto listen =
        expand_argv(endpoint_.is_tcp() ? preset.listen_on_port : preset.listen_on_socket, vars);
    if (!listen) return listen.error();
    SpawnSpec spec;
    spec.argv.push_back(config_.binary);
    spec.argv.insert(spec.argv.end(), args->begin(), args->end());
    spec.argv.insert(spec.argv.end(), listen->begin(), listen->end());
    spec.argv.insert(spec.argv.end(), config_.extra_args.begin(), config_.extra_args.end());
    spec.log_file = config_.log_file;
    spec.extra_env = config_.env;
    // Written down before it runs: a worker killed at any moment leaves no engine unrecorded.
    spec.before_exec = [this](pid_t pid) { return record(pid); };
    auto child = ChildProcess::spawn(spec);
    if (!child) {
        forget_record();
        return child.error();
    }
    child_ = std::move(child).value();
    ++generation_;
    kill_reason_.clear();
    spdlog::info("engine: started {} (pid {}) on {}, log {}", config_.binary, child_->pid(),
                 endpoint_.describe(), config_.log_file.string());
    asio::co_spawn(io_, watch_readiness(generation_), asio::detached);
    return Ok{};
}

awaitable<void> EngineRunner::watch_readiness(std::uint64_t generation) {
    steady_timer timer(io_);
    const auto endpoint = endpoint_;  // this generation's, whatever a restart sets
    const auto probe = readiness_probe();
    // One probe waits while the model loads (answered the moment it is in), rather than many
    // abandoned ones piling up in the engine's queue.
    const auto timeout = probe_timeout();
    auto interval = std::chrono::milliseconds(5);  // doubled after an answered probe
    const auto loading_since = Clock::now();
    auto last_progress = Clock::now();
    auto last_log_size = file_size_or_zero(config_.log_file);
    while (generation == generation_ &&
           (state_ == EngineState::loading || state_ == EngineState::restarting)) {
        const auto result = co_await http_probe(endpoint, probe, timeout);
        const int status = result.status;
        if (generation != generation_ || state_ == EngineState::stopping) co_return;
        if (result.ok()) {
            ever_ready_ = true;
            ready_since_ = Clock::now();
            set_state(EngineState::ready, "the readiness probe answered 200");
            if (config_.liveness_interval.count() > 0)
                asio::co_spawn(io_, watch_liveness(generation), asio::detached);
            co_return;
        }
        // A big model may take minutes to load; only a load that stops making progress fails.
        const auto log_size = file_size_or_zero(config_.log_file);
        // A probe we could not make (our own shortage) is no sign the engine is stuck.
        if (log_size != last_log_size || status != 0 || !result.own_trouble.empty())
            last_progress = Clock::now();
        last_log_size = log_size;
        if (Clock::now() - last_progress > config_.load_stall_timeout) {
            spdlog::error("engine: no progress for {} ms while loading; killing it (see {})",
                          config_.load_stall_timeout.count(), config_.log_file.string());
            kill_engine("stalled while loading (no progress for " +
                        std::to_string(config_.load_stall_timeout.count()) + " ms), killed");
            co_return;  // on_child_exit restarts it
        }
        // A request waiting for the load (one on demand) gets its answer as much sooner as
        // readiness is seen. A probe nothing answered (llama-server listens only once loaded)
        // costs the engine nothing: it is repeated every 10 ms for the first 10 s of a load,
        // then every 50 ms. One the engine answered (not ready yet) is logged by many engines:
        // those back off to 50 ms, and to 200 ms for a long load.
        const bool early = Clock::now() - loading_since < std::chrono::seconds(10);
        using std::chrono::milliseconds;
        if (status == 0 && result.own_trouble.empty()) {
            interval = early ? milliseconds(10) : milliseconds(50);
        } else {
            interval = std::min(interval * 2, early ? milliseconds(50) : milliseconds(200));
        }
        timer.expires_after(interval);
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
    }
}

awaitable<void> EngineRunner::watch_liveness(std::uint64_t generation) {
    steady_timer timer(io_);
    const auto endpoint = endpoint_;  // this generation's, whatever a restart sets
    const auto probe = readiness_probe();
    const auto timeout = probe_timeout();
    int misses = 0;
    for (;;) {
        timer.expires_after(config_.liveness_interval);
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        if (generation != generation_ || state_ != EngineState::ready) co_return;
        // Passive health: an engine that answered real requests within the interval is alive,
        // and a probe would only queue behind them (mlx_lm.server serves one batch at a time).
        if (Clock::now() - last_answer_ < config_.liveness_interval) {
            misses = 0;
            continue;
        }
        const auto result = co_await http_probe(endpoint, probe, timeout);
        const int status = result.status;
        if (generation != generation_ || state_ != EngineState::ready) co_return;
        if (!result.own_trouble.empty()) {
            spdlog::warn(
                "engine: could not probe it: {} (the worker's own trouble; the engine is "
                "not blamed)",
                result.own_trouble);
            continue;
        }
        misses = result.ok() ? 0 : misses + 1;
        if (misses == 0) continue;
        spdlog::warn("engine: liveness probe failed ({} of {} in a row, status {})", misses,
                     config_.liveness_failures, status);
        if (misses < config_.liveness_failures) continue;
        spdlog::error("engine: pid {} does not answer its readiness probe; killing it (hung?)",
                      child_->pid());
        kill_engine("hung (no answer to the liveness probe), killed");
        co_return;  // on_child_exit restarts it
    }
}

void EngineRunner::on_child_exit() {
    if (exit_wake_ != nullptr) exit_wake_->cancel();  // stop() sees the exit at once
    if (!child_) return;
    const auto exit = child_->poll_exit();
    // Many things report a dead engine (SIGCHLD, every proxied request that failed on it): act
    // on each engine's exit once.
    if (!exit || exit_handled_ == generation_) return;
    exit_handled_ = generation_;
    forget_record();
    // A kill of ours says why; only a SIGKILL nobody here sent is put down to memory.
    last_exit_ = !kill_reason_.empty() ? kill_reason_ : exit->describe();
    if (kill_reason_.empty() && exit->signaled && exit->signal == SIGKILL)
        last_exit_ += memory_kills_.explain_sigkill();
    kill_reason_.clear();
    if (state_ == EngineState::stopping || state_ == EngineState::stopped) return;
    if (restarts_ended_) {
        spdlog::warn("engine: exited while the worker is stopping ({}); not restarted", last_exit_);
        return;
    }
    if (!ever_ready_ && ++load_failures_ >= kMaxLoadFailures && on_unloadable) {
        set_state(EngineState::stopped,
                  "the engine failed to load " + std::to_string(load_failures_) + " times");
        on_unloadable("the engine failed to load the model " + std::to_string(load_failures_) +
                      " times (last: " + last_exit_ + "); see " + config_.log_file.string());
        return;
    }
    ++restarts_;
    const auto delay = next_backoff();
    spdlog::warn("engine: exited unexpectedly ({}); restarting in {} ms (restart #{})", last_exit_,
                 delay.count(), restarts_);
    set_state(EngineState::restarting, "engine " + last_exit_);
    asio::co_spawn(io_, restart_after(delay, generation_), asio::detached);
}

std::chrono::milliseconds EngineRunner::next_backoff() {
    const bool was_healthy =
        state_ == EngineState::ready && Clock::now() - ready_since_ >= kHealthyPeriod;
    if (was_healthy) consecutive_failures_ = 0;
    const int failures = consecutive_failures_++;
    if (failures == 0) return std::chrono::milliseconds(0);
    auto delay = kFirstBackoff * (1LL << std::min(failures - 1, 16));
    return std::min<std::chrono::milliseconds>(delay, kMaxBackoff);
}

awaitable<void> EngineRunner::restart_after(std::chrono::milliseconds delay,
                                            std::uint64_t generation) {
    steady_timer timer(io_, delay);
    boost::system::error_code ec;
    co_await timer.async_wait(on_error(ec));
    if (generation != generation_ || state_ != EngineState::restarting || restarts_ended_)
        co_return;
    if (auto ok = spawn(); !ok) {
        spdlog::error("engine: restart failed: {}", ok.error().message);
        asio::co_spawn(io_, restart_after(next_backoff(), generation_), asio::detached);
    }
}

awaitable<void> EngineRunner::stop() {
    set_state(EngineState::stopping, "the worker is stopping");
    if (child_ && !child_->poll_exit()) {
        child_->signal_group(SIGTERM);
        steady_timer timer(io_);
        const auto deadline = Clock::now() + config_.stop_grace;
        while (!child_->poll_exit() && Clock::now() < deadline) {
            // Woken by SIGCHLD (on_child_exit) when the engine exits; else at the deadline.
            timer.expires_at(std::min(Clock::now() + std::chrono::milliseconds(100), deadline));
            exit_wake_ = &timer;
            boost::system::error_code ec;
            co_await timer.async_wait(on_error(ec));
            exit_wake_ = nullptr;
        }
        if (!child_->poll_exit()) {
            spdlog::warn("engine: still running {} ms after SIGTERM; sending SIGKILL",
                         config_.stop_grace.count());
            kill_engine("did not stop within " + std::to_string(config_.stop_grace.count()) +
                        " ms of SIGTERM, killed");
        }
    }
    child_.reset();  // reaps (and kills the group if anything is left)
    forget_record();
    if (!endpoint_.is_tcp()) {
        std::error_code ignored;  // a socket nobody listens on; the next start replaces it anyway
        std::filesystem::remove(config_.socket, ignored);
    }
    set_state(EngineState::stopped, "stopped");
}

awaitable<bool> EngineRunner::wait_ready(Clock::time_point deadline) {
    while (state_ != EngineState::ready) {
        if (state_ == EngineState::stopping || state_ == EngineState::stopped) co_return false;
        if (Clock::now() >= deadline) co_return false;
        steady_timer timer(io_, deadline);
        waiters_.push_back(&timer);
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &timer));
    }
    co_return true;
}

void EngineRunner::set_state(EngineState state, const std::string& reason) {
    if (state == state_) return;
    spdlog::info("engine: {} -> {} ({})", to_string(state_), to_string(state), reason);
    state_ = state;
    wake_waiters();
    if (on_state_change) on_state_change();
}

void EngineRunner::wake_waiters() {
    for (auto* timer : waiters_)
        timer->cancel();
}

}  // namespace ensemble
