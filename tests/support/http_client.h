// A blocking HTTP/1.1 client with deadlines, for tests and benchmarks. Streaming responses are
// observed chunk by chunk, as they arrive, through a callback.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "os/stream_endpoint.h"

namespace ensemble::testing {

struct HttpResponse {
    int status = 0;     // 0: no response (connection refused, timeout, cut short)
    std::string error;  // why status is 0, or why the body is incomplete
    std::map<std::string, std::string> headers;  // lowercase names
    std::string body;
    bool complete = false;  // the whole message arrived, including a chunked stream's end

    std::string header(const std::string& lowercase_name) const;
};

struct HttpRequest {
    std::string method = "GET";
    std::string target = "/";
    std::string body;
    std::map<std::string, std::string> headers;
    std::chrono::milliseconds timeout{30000};
};

// Called with each piece of body as it is parsed; return false to stop reading.
using ChunkCallback = std::function<bool(std::string_view)>;

HttpResponse http_request(unsigned short port, const HttpRequest& request,
                          const ChunkCallback& on_chunk = {});
// The same to any endpoint: a Unix socket (an engine's), say.
HttpResponse http_request(const StreamEndpoint& endpoint, const HttpRequest& request,
                          const ChunkCallback& on_chunk = {});

// A connection kept open between requests, as a pooling client (the OpenAI SDKs, LiteLLM) keeps
// one: before each request it looks whether the server closed it while it was idle, as a pool
// does on checkout, and connects anew if so (or if the last answer ended the connection). A
// request that meets a connection the server closes at that moment fails, as it would there.
class KeptAliveConnection {
  public:
    explicit KeptAliveConnection(unsigned short port);
    ~KeptAliveConnection();
    KeptAliveConnection(const KeptAliveConnection&) = delete;
    KeptAliveConnection& operator=(const KeptAliveConnection&) = delete;
    // `reused`: the request went on a connection that an earlier one had used.
    HttpResponse request(const HttpRequest& request, bool& reused);

  private:
    struct State;
    std::unique_ptr<State> state_;
};

// A POST of a chat completion with the given body JSON.
HttpRequest chat_request(const std::string& json_body, bool stream = false);

// Sends raw bytes and returns whatever comes back (for malformed-HTTP tests).
std::string raw_exchange(unsigned short port, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

// A loopback port that was free a moment ago, from below the kernel's ephemeral range (so no
// engine binding port 0 in a concurrent test can take it first).
unsigned short free_port();
// `n` distinct such ports (each held until all are chosen, so none repeats).
std::vector<unsigned short> free_ports(std::size_t n);

}  // namespace ensemble::testing
