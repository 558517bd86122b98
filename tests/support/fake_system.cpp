#include "tests/support/fake_system.h"

#include <signal.h>

#include "protocol/messages.h"
#include "protocol/worker_contract.h"

namespace ensemble::testing {

// ---- time ----

std::int64_t FakeScheduler::unix_ms() const {
    return kStartUnixMs +
           std::chrono::duration_cast<std::chrono::milliseconds>(now_ - Clock::time_point{kStart})
               .count();
}

void FakeScheduler::after(std::chrono::milliseconds delay, std::function<void()> fn) {
    timers_.emplace(std::pair{now_ + delay, ++order_}, std::move(fn));
}

awaitable<void> FakeScheduler::sleep_until(Clock::time_point deadline) {
    if (deadline <= now_) co_return;
    // Never expires by itself: advance_to() cancels it when its time comes, as wake does.
    steady_timer timer(io_, steady_timer::time_point::max());
    Sleeper sleeper{deadline, &timer};
    sleepers_.push_back(&sleeper);
    boost::system::error_code ec;
    co_await timer.async_wait(on_error(ec));
    std::erase(sleepers_, &sleeper);
}

void FakeScheduler::wake_sleepers() {
    for (auto* s : sleepers_)
        s->timer->cancel();
}

void FakeScheduler::run_ready() {
    io_.restart();
    io_.poll();
}

std::optional<Scheduler::Clock::time_point> FakeScheduler::next_due() const {
    std::optional<Clock::time_point> due;
    if (!timers_.empty()) due = timers_.begin()->first.first;
    for (const auto* s : sleepers_) {
        if (!due || s->deadline < *due) due = s->deadline;
    }
    return due;
}

void FakeScheduler::advance_to(Clock::time_point to) {
    run_ready();
    for (;;) {
        const auto due = next_due();
        if (!due || *due > to) break;
        now_ = std::max(now_, *due);
        // One moment: its timers in the order they were set, then its sleepers.
        while (!timers_.empty() && timers_.begin()->first.first <= now_) {
            auto fn = std::move(timers_.begin()->second);
            timers_.erase(timers_.begin());
            fn();
            run_ready();
        }
        for (auto* s : sleepers_) {
            if (s->deadline <= now_) s->timer->cancel();
        }
        run_ready();
    }
    now_ = std::max(now_, to);
    run_ready();
}

// ---- the process table ----

pid_t FakeWorld::start_process() {
    const pid_t pid = ++next_pid_;
    processes[pid] = ++next_start_;
    return pid;
}

std::shared_ptr<FakeWorker> FakeWorld::start_worker(int port, const std::string& handle) {
    auto worker = std::make_shared<FakeWorker>();
    worker->pid = start_process();
    worker->start_time = processes[worker->pid];
    worker->port = port;
    worker->handle = handle;
    workers[worker->pid] = worker;
    return worker;
}

void FakeWorld::end(pid_t pid, ExitStatus status) {
    processes.erase(pid);
    const auto it = workers.find(pid);
    if (it == workers.end() || it->second->exit) return;
    it->second->exit = status;
    if (on_worker_end) on_worker_end();
}

void FakeWorld::deliver(pid_t pid, int signal) {
    const auto it = workers.find(pid);
    if (it == workers.end() || it->second->exit) return;
    if (signal == SIGKILL) {
        end(pid, {0, SIGKILL, true});
    } else if (signal == SIGTERM && !it->second->ignores_stop) {
        end(pid, {0, 0, false});  // drains and exits, as asked
    }
}

std::shared_ptr<FakeWorker> FakeWorld::newest_on(int port) const {
    std::shared_ptr<FakeWorker> newest;
    for (const auto& [pid, w] : workers) {
        if (w->port == port && (!newest || w->pid > newest->pid)) newest = w;
    }
    return newest;
}

int FakeWorld::signals_to(pid_t pid, int signal) const {
    return static_cast<int>(std::count_if(signals.begin(), signals.end(), [&](const auto& s) {
        return s.pid == pid && s.signal == signal;
    }));
}

Result<ProcessIdentity> FakeProcesses::identify(pid_t pid) const {
    const auto it = world_.processes.find(pid);
    if (it == world_.processes.end())
        return Error{"gone", "no process " + std::to_string(pid) + " runs"};
    if (world_.unreadable.contains(pid))
        return Error{"unreadable", "cannot read the start time of pid " + std::to_string(pid)};
    return ProcessIdentity{pid, it->second};
}

IdentityCheck FakeProcesses::check(const ProcessIdentity& recorded) const {
    if (recorded.pid <= 1) return {IdentityVerdict::gone, ""};
    if (world_.unreadable.contains(recorded.pid))
        return {IdentityVerdict::unknown, "its start time cannot be read"};
    const auto it = world_.processes.find(recorded.pid);
    if (it == world_.processes.end()) return {IdentityVerdict::gone, ""};
    if (it->second != recorded.start_time)
        return {IdentityVerdict::reused, "pid " + std::to_string(recorded.pid) + " is reused"};
    return {IdentityVerdict::same, ""};
}

void FakeProcesses::signal_child(pid_t pid, int signal) {
    world_.signals.push_back({pid, signal, false});
    world_.deliver(pid, signal);
}

KillReport FakeProcesses::signal_if_ours(const ProcessIdentity& process, int signal,
                                         const std::string& what) {
    const auto verdict = check(process).verdict;
    if (verdict == IdentityVerdict::gone) return {KillOutcome::gone, what + " is gone"};
    if (verdict != IdentityVerdict::same) return {KillOutcome::not_ours, what + " is not ours"};
    world_.signals.push_back({process.pid, signal, true});
    world_.deliver(process.pid, signal);
    return {KillOutcome::killed, what + " signalled"};
}

Status FakeProcesses::port_free(const std::string& /*host*/, int port) const {
    if (!world_.busy_ports.contains(port)) return Ok{};
    return Error{"port_busy", "port " + std::to_string(port) + " is in use by another process"};
}

Result<ListeningSocket> FakeProcesses::listen(const std::string& host, int port) {
    if (world_.busy_ports.contains(port))
        return Error{"port_busy", "port " + std::to_string(port) + " is in use by another process"};
    ++world_.listening_sockets_opened[port];
    return ListeningSocket::open(host, 0);
}

std::vector<std::string> FakeProcesses::stop_engine_left_behind(
    const std::filesystem::path& record_path, const EngineRecord& /*told*/,
    const std::string& /*boot*/, const std::string& /*what*/) {
    // engine-PORT.record: the port is what the tests look at.
    const auto name = record_path.stem().string();
    world_.engines_stopped.push_back(std::stoi(name.substr(name.find('-') + 1)));
    world_.engine_records_checked.push_back(record_path);
    return {};
}

// ---- workers ----

Result<WorkerLaunch> FakeLauncher::plan(const Config& config, int port, const std::string& handle,
                                        const PortAssignment* overrides,
                                        const WorkerSlot& slot) const {
    return planner_.plan(config, port, handle, overrides, slot);
}

Result<SpawnedWorker> FakeLauncher::spawn(const Config& config, int port, const std::string& handle,
                                          const PortAssignment* overrides,
                                          const ListeningSocket& listening, WorkerSlot slot) const {
    auto launch = plan(config, port, handle, overrides, slot);
    if (!launch) return launch.error();
    if (!world_.spawn_error_code.empty())
        return Error{world_.spawn_error_code, "cannot start a process (pretend)"};
    auto worker = world_.start_worker(port, handle);
    worker->launch = *launch;
    worker->listening_fd = listening.fd();
    worker->slot = slot;
    world_.spawned.push_back(std::to_string(port) + " " + handle);
    if (world_.clock != nullptr) world_.spawned_at.push_back(world_.clock->now());
    if (world_.dead_on_arrival.contains(handle))
        world_.end(worker->pid,
                   {protocol::exit_code(protocol::WorkerExit::model_not_loadable), 0, false});

    class Process final : public WorkerProcess {
      public:
        explicit Process(std::shared_ptr<FakeWorker> w) : w_(std::move(w)) {}
        pid_t pid() const override { return w_->pid; }
        std::optional<ExitStatus> poll_exit() override {
            if (!w_->exit || w_->reaped) return std::nullopt;
            w_->reaped = true;
            return w_->exit;
        }

      private:
        std::shared_ptr<FakeWorker> w_;
    };
    return SpawnedWorker{*launch, std::make_unique<Process>(worker)};
}

void FakeLink::send(const nlohmann::json& message) {
    sent.push_back(message);
    world_.told.push_back(std::to_string(worker_->pid) + " " + message.value("type", "?"));
    if (message == protocol::stop_message() && !worker_->ignores_stop)
        world_.end(worker_->pid, {0, 0, false});
}

std::optional<ProcessIdentity> FakeLink::identity() const {
    if (!world_.processes.contains(worker_->pid)) return std::nullopt;
    return ProcessIdentity{worker_->pid, worker_->start_time};
}

}  // namespace ensemble::testing
