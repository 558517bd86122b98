// A bounded client load for the chaos suite: a few threads sending chat completions (every
// third one streamed) to one port back to back, recording what became of each request, so a
// scenario can judge them against the moments it killed something. Each request on a new
// connection, or (Connections::kept_alive) each thread on one kept open, as a pooling client.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ensemble::testing {

struct RequestOutcome {
    using Clock = std::chrono::steady_clock;
    Clock::time_point start, end;
    int status = 0;        // 0: no HTTP response at all
    bool refused = false;  // the connection was refused: nothing held the port
    bool streamed = false;
    bool stream_done = false;   // a stream that ended with data: [DONE]
    bool stream_error = false;  // a stream that ended with an SSE error event
    bool complete = false;      // the response (or stream) ended cleanly, not cut or timed out
    bool reused = false;        // sent on a kept-alive connection an earlier request had used
    std::string error;          // what the transport said, or the start of an error response's body

    bool ok() const { return status == 200 && complete && (!streamed || stream_done); }
    // A failure the client can act on: an HTTP error, or a stream ending with an error event.
    bool clean_failure() const { return !ok() && (status >= 400 || stream_error) && complete; }
};

enum class Connections { one_per_request, kept_alive };

class LoadGenerator {
  public:
    LoadGenerator(unsigned short port, int threads, std::chrono::milliseconds pause = {},
                  Connections connections = Connections::one_per_request);
    ~LoadGenerator();
    void start();
    std::vector<RequestOutcome> stop();  // waits for the requests in flight
    std::size_t count() const;

  private:
    void run(int thread_index);

    unsigned short port_;
    int threads_;
    std::chrono::milliseconds pause_;
    Connections connections_;
    std::atomic<bool> running_{false};
    std::vector<std::thread> workers_;
    mutable std::mutex mutex_;
    std::vector<RequestOutcome> outcomes_;
};

}  // namespace ensemble::testing
