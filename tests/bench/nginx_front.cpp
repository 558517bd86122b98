#include "tests/bench/nginx_front.h"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <thread>

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

std::string config(unsigned short port, const std::filesystem::path& engine_socket,
                   const std::filesystem::path& folder) {
    const auto f = folder.string();
    // As root, nginx's worker would switch to an unprivileged user that cannot enter the engine's
    // private socket folder: keep it as the user who owns that folder.
    const std::string user = ::geteuid() == 0 ? "user root;\n" : "";
    return user +
           "worker_processes 1;\n"
           "pid " +
           f +
           "/nginx.pid;\n"
           "events { worker_connections 1024; }\n"
           "http {\n"
           "  access_log off;\n"
           "  client_body_temp_path " +
           f +
           "/body;\n"
           "  proxy_temp_path " +
           f +
           "/proxy;\n"
           "  fastcgi_temp_path " +
           f +
           "/fastcgi;\n"
           "  uwsgi_temp_path " +
           f +
           "/uwsgi;\n"
           "  scgi_temp_path " +
           f +
           "/scgi;\n"
           "  upstream engine {\n"
           "    server unix:" +
           engine_socket.string() +
           ";\n"
           "    keepalive 64;\n"
           "    keepalive_requests 1000000;\n"
           "  }\n"
           "  server {\n"
           "    listen 127.0.0.1:" +
           std::to_string(port) +
           ";\n"
           "    keepalive_requests 1000000;\n"
           "    client_max_body_size 16m;\n"
           "    client_body_buffer_size 2m;\n"
           "    location / {\n"
           "      proxy_pass http://engine;\n"
           "      proxy_http_version 1.1;\n"
           "      proxy_set_header Connection \"\";\n"
           "      proxy_buffering off;\n"
           "      proxy_read_timeout 600s;\n"
           "    }\n"
           "  }\n"
           "}\n";
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
    for (int i = 0; i < 100; ++i) {
        testing::HttpRequest probe;
        probe.target = "/health";
        probe.timeout = std::chrono::milliseconds(1000);
        if (testing::http_request(port, probe).status == 200) return;
        if (process_->poll_exit()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
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

}  // namespace ensemble::bench
