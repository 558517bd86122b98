#include "supervisor/system.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>

#include "os/memory_kill_watch.h"
#include "os/port_holder.h"

namespace ensemble {

std::int64_t AsioScheduler::unix_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void AsioScheduler::after(std::chrono::milliseconds delay, std::function<void()> fn) {
    auto timer = std::make_shared<steady_timer>(io_, delay);
    timer->async_wait([timer, fn = std::move(fn)](boost::system::error_code ec) {
        if (!ec) fn();
    });
}

awaitable<void> AsioScheduler::sleep_until(Clock::time_point deadline) {
    steady_timer timer(io_, deadline);
    sleepers_.push_back(&timer);
    boost::system::error_code ec;
    co_await timer.async_wait(on_error(ec));
    std::erase(sleepers_, &timer);
}

void AsioScheduler::wake_sleepers() {
    for (auto* timer : sleepers_)
        timer->cancel();
}

struct OsProcessOps::Watch {
    MemoryKillWatch watch;
};

OsProcessOps::OsProcessOps(asio::io_context& io) : memory_kills_(std::make_unique<Watch>()) {
    memory_kills_->watch.watch(io, std::chrono::seconds(1));
}

OsProcessOps::~OsProcessOps() = default;

Result<ProcessIdentity> OsProcessOps::identify(pid_t pid) const {
    return identify_process(pid);
}

IdentityCheck OsProcessOps::check(const ProcessIdentity& recorded) const {
    return check_identity(recorded);
}

void OsProcessOps::signal_child(pid_t pid, int signal) {
    ::kill(pid, signal);
}

KillReport OsProcessOps::signal_if_ours(const ProcessIdentity& process, int signal,
                                        const std::string& what) {
    return ensemble::signal_if_ours(process, signal, what);
}

std::string OsProcessOps::boot_id() const {
    return ensemble::boot_id();
}

Status OsProcessOps::port_free(const std::string& host, int port) const {
    boost::asio::io_context io;
    tcp_acceptor probe(io);
    boost::system::error_code ec;
    const auto address = boost::asio::ip::make_address(host, ec);
    if (ec) return Error{"bad_host", "bind_host '" + host + "' is not an IP address"};
    const boost::asio::ip::tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
    probe.open(endpoint.protocol(), ec);
    if (!ec) probe.set_option(tcp_acceptor::reuse_address(true), ec);
    if (!ec) probe.bind(endpoint, ec);
    if (ec) {
        // A probe where busy is often the expected answer (a worker registering): no search for
        // the holder here, which reads every process's descriptors.
        return Error{"port_busy", "port " + std::to_string(port) +
                                      " is in use by another process (" + ec.message() +
                                      "); stop it or choose another port"};
    }
    return Ok{};
}

std::string OsProcessOps::port_holder(int port) const {
    return port_holder_hint(port);
}

Result<ListeningSocket> OsProcessOps::listen(const std::string& host, int port) {
    return ListeningSocket::open(host, port);
}

std::vector<std::string> OsProcessOps::stop_engine_left_behind(
    const std::filesystem::path& record_path, const EngineRecord& told, const std::string& boot,
    const std::string& what) {
    std::vector<std::string> done;
    const auto report_unless_gone = [&](const KillReport& report) {
        if (report.outcome == KillOutcome::gone) {
            spdlog::debug("{}", report.message);
        } else {
            done.push_back(report.message);
        }
    };
    pid_t from_record = 0;
    // What the worker wrote down before its engine ran: found even when the worker was killed
    // before it could tell us. A record held by a live worker is that worker's to act on.
    std::error_code absent;
    if (std::filesystem::symlink_status(record_path, absent).type() ==
        std::filesystem::file_type::not_found) {
        // No worker ever ran an engine here.
    } else if (auto file = RecordFile::acquire(record_path)) {
        if (auto left = (*file)->read(); left && *left) from_record = (*left)->leader.pid;
        report_unless_gone((*file)->stop_recorded(what, std::chrono::milliseconds(0)));
    } else if (file.error().code != "record_in_use") {
        done.push_back(file.error().message);
    }
    // And what the worker told us, in case its record was lost or unusable.
    if (told.pid == 0 || told.pid == from_record) return done;  // none, or just handled
    const auto engine = RecordedProcess::from_stored(told.pid, told.start_time, told.group, boot);
    if (!engine) {
        done.push_back(what + " (pid " + std::to_string(told.pid) + ", group " +
                       std::to_string(told.group) +
                       ", as the worker reported it) is not one Ensemble records (it leads its own "
                       "group); nothing is stopped");
        return done;
    }
    report_unless_gone(kill_if_ours(*engine, SIGKILL, what));
    return done;
}

std::string OsProcessOps::explain_sigkill() {
    return memory_kills_->watch.explain_sigkill();
}

}  // namespace ensemble
