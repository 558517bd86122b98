// The worker's link to ensembled, against a socket this test listens on as ensembled would.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "protocol/framing.h"
#include "worker/supervisor_link.h"

using namespace ensemble;

namespace {

// A listening Unix socket that reads the link's frames, each within `wait`.
class FakeSupervisorSocket {
  public:
    explicit FakeSupervisorSocket(std::filesystem::path path) : path_(std::move(path)) {
        std::filesystem::remove(path_);
        listener_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path_.c_str());
        EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
        EXPECT_EQ(::listen(listener_, 4), 0);
    }
    ~FakeSupervisorSocket() {
        if (peer_ >= 0) ::close(peer_);
        ::close(listener_);
        std::filesystem::remove(path_);
    }

    // The next frame's type, or "" when none came within `wait`.
    std::string next_type(std::chrono::milliseconds wait) {
        for (;;) {
            if (auto frame = decoder_.next()) return *frame ? (*frame)->value("type", "?") : "?";
            const int fd = peer_ >= 0 ? peer_ : listener_;
            pollfd ready{fd, POLLIN, 0};
            if (::poll(&ready, 1, static_cast<int>(wait.count())) != 1) return "";
            if (peer_ < 0) {
                peer_ = ::accept(listener_, nullptr, nullptr);
                continue;
            }
            char buffer[4096];
            const auto n = ::read(peer_, buffer, sizeof buffer);
            if (n <= 0) return "";
            decoder_.feed(std::string_view(buffer, static_cast<std::size_t>(n)));
        }
    }

  private:
    std::filesystem::path path_;
    int listener_ = -1;
    int peer_ = -1;
    protocol::FrameDecoder decoder_;
};

TEST(SupervisorLink, AReportAskedForWhileABeatIsBeingMadeIsSentAtOnce) {
    // A state change that comes while a heartbeat is being made or written (no wait on the timer
    // to cancel yet) is not left for the next tick: here a tick is a minute away.
    const auto path = std::filesystem::temp_directory_path() /
                      ("ens-link-" + std::to_string(::getpid()) + ".sock");
    FakeSupervisorSocket supervisor(path);
    auto io = std::make_unique<asio::io_context>();
    LinkConfig config;
    config.socket_path = path.string();
    config.worker_id = "w1";
    config.token = "t";
    config.port = 8100;
    config.heartbeat_interval = std::chrono::minutes(1);
    config.loading_heartbeat_interval = std::chrono::minutes(1);
    int beats = 0;
    std::unique_ptr<SupervisorLink> link;
    link = std::make_unique<SupervisorLink>(
        *io, config,
        [&] {
            if (++beats == 1) link->report_now();
            protocol::WorkerStats stats;
            stats.state = "ready";
            return stats;
        },
        [](const std::string&) {});
    link->start();
    std::thread runner([&] { io->run(); });

    EXPECT_EQ(supervisor.next_type(std::chrono::seconds(10)), "register");
    EXPECT_EQ(supervisor.next_type(std::chrono::seconds(10)), "heartbeat");
    EXPECT_EQ(supervisor.next_type(std::chrono::seconds(10)), "heartbeat")
        << "the report asked for during the first beat waited for the next tick";

    io->stop();
    runner.join();
    link.reset();  // its socket and timer go back to the io_context's services first
    io.reset();
}

}  // namespace
