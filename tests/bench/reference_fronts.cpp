#include "tests/bench/reference_fronts.h"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "tests/support/http_client.h"
#include "tests/support/worker_process.h"

namespace ensemble::bench {

namespace {

std::filesystem::path find_nginx() {
    for (const char* candidate :
         {"/usr/sbin/nginx", "/opt/homebrew/bin/nginx", "/usr/local/bin/nginx"}) {
        if (std::filesystem::exists(candidate)) return candidate;
    }
    throw std::runtime_error("nginx is not installed: run deploy/install-deps --bench");
}

// tests/bench/nginx.conf with its blanks filled in.
std::string config(unsigned short port, const std::filesystem::path& engine_socket,
                   const std::filesystem::path& folder) {
    const std::filesystem::path source = ENSEMBLE_BENCH_NGINX_CONF;
    std::ifstream in(source);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.empty()) throw std::runtime_error("cannot read " + source.string());
    const std::pair<std::string, std::string> blanks[] = {
        {"@USER@", ::geteuid() == 0 ? "user root;" : ""},
        {"@FOLDER@", folder.string()},
        {"@PORT@", std::to_string(port)},
        {"@ENGINE_SOCKET@", engine_socket.string()}};
    for (const auto& [blank, value] : blanks) {
        for (auto at = text.find(blank); at != std::string::npos; at = text.find(blank, at))
            text.replace(at, blank.size(), value);
    }
    return text;
}

// Waits until `port` answers GET /health (the engine's, through the front), or `process` ends.
bool wait_until_serving(unsigned short port, ChildProcess& process) {
    for (int i = 0; i < 100; ++i) {
        testing::HttpRequest probe;
        probe.target = "/health";
        probe.timeout = std::chrono::milliseconds(1000);
        if (testing::http_request(port, probe).status == 200) return true;
        if (process.poll_exit()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
}

}  // namespace

NginxFront::NginxFront(unsigned short port, const std::filesystem::path& engine_socket,
                       const std::filesystem::path& folder)
    : port_(port) {
    std::filesystem::create_directories(folder);
    std::ofstream(folder / "nginx.conf") << config(port, engine_socket, folder);
    SpawnSpec spec;
    spec.argv = {find_nginx().string(),
                 "-p",
                 folder.string(),
                 "-c",
                 (folder / "nginx.conf").string(),
                 "-e",
                 (folder / "error.log").string(),
                 "-g",
                 "daemon off;"};
    spec.log_file = folder / "nginx.out";
    auto spawned = ChildProcess::spawn(spec);
    if (!spawned) throw std::runtime_error("cannot start nginx: " + spawned.error().message);
    process_ = std::move(spawned).value();
    if (wait_until_serving(port, *process_)) return;
    throw std::runtime_error("nginx did not come up on port " + std::to_string(port) + "; see " +
                             (folder / "error.log").string());
}

pid_t NginxFront::worker_pid() const {
    const auto workers = testing::children_of(process_->pid());
    if (workers.size() != 1)
        throw std::runtime_error("nginx runs " + std::to_string(workers.size()) +
                                 " worker processes; the configuration asks for one");
    return workers.front();
}

NginxFront::~NginxFront() {
    process_->signal_group(SIGQUIT);  // graceful
    for (int i = 0; i < 100 && !process_->poll_exit(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

#ifdef ENSEMBLE_BENCH_BYTE_RELAY_BIN
ByteRelayFront::ByteRelayFront(unsigned short port, const std::filesystem::path& engine_socket,
                               const std::filesystem::path& folder)
    : port_(port) {
    std::filesystem::create_directories(folder);
    SpawnSpec spec;
    spec.argv = {ENSEMBLE_BENCH_BYTE_RELAY_BIN, std::to_string(port), engine_socket.string()};
    spec.log_file = folder / "byte-relay.out";
    auto spawned = ChildProcess::spawn(spec);
    if (!spawned)
        throw std::runtime_error("cannot start the byte relay: " + spawned.error().message);
    process_ = std::move(spawned).value();
    if (wait_until_serving(port, *process_)) return;
    throw std::runtime_error("the byte relay did not come up on port " + std::to_string(port) +
                             "; see " + spec.log_file.string());
}

ByteRelayFront::~ByteRelayFront() {
    process_->signal_group(SIGTERM);
    for (int i = 0; i < 100 && !process_->poll_exit(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
}
#endif

}  // namespace ensemble::bench
