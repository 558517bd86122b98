// The references the worker's data path is measured against, each in front of an engine's Unix
// socket: nginx, configured by tests/bench/nginx.conf as a careful user would for this job, and
// the byte relay (tests/bench/byte_relay.cpp), the floor no proxy that reads HTTP can go below.
#pragma once

#include <filesystem>
#include <memory>

#include "os/child_process.h"

namespace ensemble::bench {

class NginxFront {
  public:
    // Starts nginx on 127.0.0.1:`port` proxying to `engine_socket`; files live in `folder`.
    // Throws when nginx is missing or does not come up (a benchmark's start-up failure).
    NginxFront(unsigned short port, const std::filesystem::path& engine_socket,
               const std::filesystem::path& folder);
    ~NginxFront();
    unsigned short port() const { return port_; }
    pid_t worker_pid() const;  // the one worker process, which serves every request

  private:
    unsigned short port_;
    std::unique_ptr<ChildProcess> process_;
};

class ByteRelayFront {
  public:
    // Starts the byte relay on 127.0.0.1:`port` piping to `engine_socket`; its output goes to
    // `folder`. Throws when it does not come up.
    ByteRelayFront(unsigned short port, const std::filesystem::path& engine_socket,
                   const std::filesystem::path& folder);
    ~ByteRelayFront();
    unsigned short port() const { return port_; }
    pid_t pid() const { return process_->pid(); }

  private:
    unsigned short port_;
    std::unique_ptr<ChildProcess> process_;
};

}  // namespace ensemble::bench
