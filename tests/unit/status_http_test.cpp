// ensembled's status listener on a fleet of the pretend machine: what each route answers, the
// token and the Host check, and the limits that keep hostile or stuck clients from holding the
// supervisor's event loop (connection and stream caps, header size, a stream nobody reads).
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "protocol/prometheus_text.h"
#include "supervisor/status_http.h"
#include "tests/support/fleet_harness.h"
#include "tests/support/http_client.h"
#include "tests/support/promtool.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

// A loopback TCP connection with a request already sent; closed when it goes.
class RawClient {
  public:
    RawClient(unsigned short port, const std::string& request, int receive_buffer = 0) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        if (receive_buffer > 0)
            ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
        if (connected_) connected_ = ::send(fd_, request.data(), request.size(), 0) > 0;
    }
    ~RawClient() { ::close(fd_); }
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;

    // What arrives within `timeout` (or until the peer closes).
    std::string read_for(std::chrono::milliseconds timeout, std::size_t enough = SIZE_MAX) {
        std::string out;
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        char buffer[16384];
        while (out.size() < enough) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) break;
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
            const auto n = ::recv(fd_, buffer, sizeof buffer, 0);
            if (n <= 0) {
                closed_ = true;
                break;
            }
            out.append(buffer, static_cast<std::size_t>(n));
        }
        return out;
    }
    bool connected() const { return connected_; }
    bool closed() const { return closed_; }

  private:
    int fd_ = -1;
    bool connected_ = false;
    bool closed_ = false;
};

std::string get(const std::string& target, const std::string& extra_headers = "") {
    return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra_headers + "\r\n";
}

constexpr const char* kEventStream = "Accept: text/event-stream\r\n";

StatusHttpLimits caps(std::size_t connections, std::size_t streams) {
    StatusHttpLimits limits;
    limits.max_connections = connections;
    limits.max_streams = streams;
    return limits;
}

class StatusHttpTest : public FleetFixture {
  protected:
    void serve_status(StatusHttpLimits limits = {}, const std::string& token = "",
                      const std::string& models = "") {
        start("", models);
        ASSERT_EQ(command(protocol::Verb::profile_load, 0, "", "pair")["ok"], true);
        StatusHttpSettings settings;
        settings.port = 0;
        http_ = std::make_unique<StatusHttp>(io_, settings, token, *fleet_, limits);
        ASSERT_TRUE(http_->listen());
        http_->start();
        port_ = http_->bound_port();
        ASSERT_GT(port_, 0);
    }

    void TearDown() override {
        http_.reset();
        FleetFixture::TearDown();
    }

    // Runs `client` on another thread while this one runs the supervisor's event loop.
    template <typename Client>
    auto with_clients(Client client) {
        auto done = std::async(std::launch::async, client);
        while (done.wait_for(0s) != std::future_status::ready) {
            io_.restart();
            io_.run_for(5ms);
        }
        return done.get();
    }

    HttpResponse request(const std::string& target, std::map<std::string, std::string> headers = {},
                         const std::string& method = "GET") {
        return with_clients([&] {
            HttpRequest r;
            r.method = method;
            r.target = target;
            r.headers = headers;
            r.timeout = 5s;
            return http_request(port_, r);
        });
    }

    std::unique_ptr<StatusHttp> http_;
    unsigned short port_ = 0;
};

TEST_F(StatusHttpTest, AnswersTheFleetAsMetricsStatusAndEvents) {
    serve_status();
    const auto metrics = request("/metrics");
    ASSERT_EQ(metrics.status, 200) << metrics.error;
    EXPECT_EQ(metrics.header("content-type"), protocol::kPrometheusContentType);
    EXPECT_NE(metrics.body.find("ensemble_port_state{port=\"8100\",state=\"ready\"} 1"),
              std::string::npos)
        << metrics.body;
    EXPECT_NE(metrics.body.find("ensemble_port_info{port=\"8101\",model=\"b\",profile=\"pair\""),
              std::string::npos);
    EXPECT_NE(metrics.body.find("ensemble_port_memory_estimate_bytes{port=\"8100\",model=\"a\"} " +
                                std::to_string(3ULL << 30)),
              std::string::npos);
    const auto verdict = promtool_check_metrics(metrics.body);
    EXPECT_TRUE(verdict.ok) << verdict.output << "\n" << metrics.body;

    const auto status = request("/api/status");
    ASSERT_EQ(status.status, 200);
    const auto j = json::parse(status.body);
    // The same value control.sock's `status` answers.
    EXPECT_EQ(j, command(protocol::Verb::status)["result"]);
    ASSERT_EQ(j["ports"].size(), 2U);
    EXPECT_EQ(j["ports"][0]["model"], "a");

    const auto newest = json::parse(request("/api/events?lines=2").body)["events"];
    ASSERT_EQ(newest.size(), 2U);
    const auto all = json::parse(request("/api/events?lines=1000").body)["events"];
    ASSERT_GT(all.size(), 2U);
    const auto after = json::parse(
        request("/api/events?after=" + std::to_string(all[all.size() - 2]["id"].get<int>()))
            .body)["events"];
    ASSERT_EQ(after.size(), 1U);
    EXPECT_EQ(after[0], all.back());

    const auto page = request("/");
    EXPECT_EQ(page.status, 200);
    EXPECT_EQ(page.header("content-type"), "text/html; charset=utf-8");
    EXPECT_NE(page.header("content-security-policy").find("default-src 'none'"), std::string::npos);
    EXPECT_NE(page.body.find("id=\"ports\""), std::string::npos);
    EXPECT_EQ(page.body.find("://"), std::string::npos) << "the page loads nothing from elsewhere";
}

// Found by an adversarial run: a model path with a byte that is not UTF-8 made rendering throw,
// and each request after it held its connection for good (1,024 of them: every route 503).
TEST_F(StatusHttpTest, ABytePastUtf8IsReplacedNotAConnectionLost) {
    serve_status({}, "",
                 "  latin: {engine: fake, path: \"/models/mod\xe8le.gguf\", memory: 1GiB}\n");
    ASSERT_EQ(command(protocol::Verb::load, kC, "latin")["ok"], true);
    for (int i = 0; i < 5; ++i) {
        const auto status = request("/api/status");
        ASSERT_EQ(status.status, 200) << status.error;
        EXPECT_NE(status.body.find("mod\xef\xbf\xbdle.gguf"), std::string::npos) << "U+FFFD";
    }
    const auto metrics = request("/metrics");
    EXPECT_NE(metrics.body.find("ensemble_status_connections 1\n"), std::string::npos)
        << metrics.body;
}

TEST_F(StatusHttpTest, RefusesWhatItDoesNotServeWithTheReason) {
    serve_status();
    const auto post = request("/api/status", {}, "POST");
    EXPECT_EQ(post.status, 405);
    EXPECT_EQ(post.header("allow"), "GET, HEAD");
    EXPECT_EQ(request("/api/load").status, 404);
    EXPECT_EQ(request("/api/events?lines=0").status, 400);
    EXPECT_EQ(request("/api/events?after=x").status, 400);
    // DNS rebinding: a page of another site that resolves its name to 127.0.0.1.
    const auto rebound = request("/api/status", {{"Host", "attacker.example:8099"}});
    EXPECT_EQ(rebound.status, 403);
    EXPECT_NE(rebound.body.find("forbidden_host"), std::string::npos);
    EXPECT_EQ(request("/api/status", {{"Host", "localhost:8099"}}).status, 200);
    EXPECT_EQ(request("/api/status", {{"Host", "[::1]:8099"}}).status, 200);

    const auto head = request("/metrics", {}, "HEAD");
    EXPECT_EQ(head.status, 200);
    EXPECT_TRUE(head.body.empty());
    EXPECT_GT(std::stoul(head.header("content-length")), 100U);

    const auto replies = with_clients([&] {
        std::vector<std::string> out;
        RawClient big(port_, get("/metrics", "X-Big: " + std::string(16 * 1024, 'a') + "\r\n"));
        out.push_back(big.read_for(2s));
        RawClient body(port_,
                       "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Content-Length: 5\r\n\r\nhello");
        out.push_back(body.read_for(2s));
        RawClient junk(port_, "\x16\x03\x01 not http\r\n\r\n");
        out.push_back(junk.read_for(2s));
        return out;
    });
    EXPECT_TRUE(replies[0].starts_with("HTTP/1.1 431")) << replies[0];
    EXPECT_TRUE(replies[1].starts_with("HTTP/1.1 400")) << replies[1];
    EXPECT_TRUE(replies[2].starts_with("HTTP/1.1 400")) << replies[2];
}

TEST_F(StatusHttpTest, WithATokenEveryDataRouteNeedsItAndThePageDoesNot) {
    const std::string token = "0123456789abcdef0123456789abcdef";
    serve_status({}, token);
    const auto missing = request("/api/status");
    EXPECT_EQ(missing.status, 401);
    EXPECT_EQ(missing.header("www-authenticate"), "Bearer");
    EXPECT_EQ(request("/metrics", {{"Authorization", "Bearer wrong"}}).status, 401);
    EXPECT_EQ(request("/api/events", {{"Authorization", "Bearer " + token + "x"}}).status, 401);
    EXPECT_EQ(request("/metrics", {{"Authorization", "Bearer " + token}}).status, 200);
    // Served by name from elsewhere: the token, not the Host, is the check.
    EXPECT_EQ(request("/api/status",
                      {{"Authorization", "Bearer " + token}, {"Host", "studio.example:8099"}})
                  .status,
              200);
    EXPECT_EQ(request("/").status, 200) << "the page holds no data; it asks for the token";
}

TEST_F(StatusHttpTest, AtTheCapTheLongestIdleMakesRoomSlowSendersIncluded) {
    serve_status(caps(2, 1));
    const auto replies = with_clients([&] {
        std::vector<std::string> out;
        // One sending its request ever so slowly, one kept alive after its answer: both
        // idle, and a newcomer closes the older.
        RawClient a(port_, "GET /api/status HTTP/1.1\r\n");
        out.push_back("HTTP/1.1 200 (not asked yet)");
        std::this_thread::sleep_for(50ms);
        RawClient b(port_, get("/api/status"));
        out.push_back(b.read_for(1s, 12));
        RawClient c(port_, get("/api/status"));
        out.push_back(c.read_for(1s, 12));
        a.read_for(1s);
        out.push_back(a.closed() ? "closed" : "open");
        b.read_for(200ms);
        out.push_back(b.closed() ? "closed" : "open");
        return out;
    });
    EXPECT_TRUE(replies[0].starts_with("HTTP/1.1 200")) << replies[0];
    EXPECT_TRUE(replies[1].starts_with("HTTP/1.1 200")) << replies[1];
    EXPECT_TRUE(replies[2].starts_with("HTTP/1.1 200")) << "served: room was made";
    EXPECT_EQ(replies[3], "closed") << "the longest idle made room";
    EXPECT_EQ(replies[4], "open");
}

TEST_F(StatusHttpTest, StreamsPastTheirCapAre503AndARefusedRequestHoldsNoSlot) {
    serve_status(caps(3, 1));
    const auto replies = with_clients([&] {
        std::vector<std::string> out;
        RawClient first(port_, get("/api/events", kEventStream));
        out.push_back(first.read_for(1s, 1));
        RawClient second(port_, get("/api/events", kEventStream));
        out.push_back(second.read_for(1s));
        RawClient refused(port_, get("/nowhere"));
        out.push_back(refused.read_for(1s));
        out.push_back(refused.closed() ? "closed" : "open");
        return out;
    });
    EXPECT_TRUE(replies[0].starts_with("HTTP/1.1 200")) << replies[0];
    EXPECT_TRUE(replies[1].starts_with("HTTP/1.1 503")) << replies[1];
    EXPECT_NE(replies[1].find("too_many_streams"), std::string::npos);
    EXPECT_TRUE(replies[2].starts_with("HTTP/1.1 404")) << replies[2];
    EXPECT_EQ(replies[3], "closed");
}

TEST_F(StatusHttpTest, WithEverySlotFollowingEventsANewcomerIs503) {
    serve_status(caps(2, 2));
    const auto over = with_clients([&] {
        RawClient first(port_, get("/api/events", kEventStream));
        first.read_for(1s, 1);
        RawClient second(port_, get("/api/events", kEventStream));
        second.read_for(1s, 1);
        RawClient newcomer(port_, get("/api/status"));
        return newcomer.read_for(1s);
    });
    EXPECT_TRUE(over.starts_with("HTTP/1.1 503")) << over;
    EXPECT_NE(over.find("too_many_connections"), std::string::npos);
    EXPECT_NE(over.find("Retry-After: 1"), std::string::npos);
}

TEST_F(StatusHttpTest, AStreamSendsTheStatusAndEachNewEvent) {
    StatusHttpLimits limits;
    limits.stream_interval = 100ms;
    limits.render_reuse = 0ms;
    serve_status(limits);
    auto client = std::make_unique<RawClient>(port_, get("/api/events?after=0", kEventStream));
    const auto first = with_clients([&] { return client->read_for(500ms); });
    EXPECT_NE(first.find("Content-Type: text/event-stream"), std::string::npos) << first;
    EXPECT_NE(first.find("event: status\ndata: {"), std::string::npos);
    EXPECT_NE(first.find("event: event\ndata: {"), std::string::npos);
    // An event that happens while the client follows reaches it.
    ASSERT_EQ(command(protocol::Verb::unload, kB)["ok"], true);
    const auto later = with_clients([&] { return client->read_for(500ms); });
    EXPECT_NE(later.find("\"kind\":\"unload\""), std::string::npos) << later;
    const auto statuses = [](const std::string& text) {
        std::size_t n = 0;
        for (auto at = text.find("event: status"); at != std::string::npos;
             at = text.find("event: status", at + 1))
            ++n;
        return n;
    };
    EXPECT_GE(statuses(later), 3U) << "one status every 100 ms";
}

TEST_F(StatusHttpTest, AStreamNobodyReadsIsDroppedWhileOthersAreServed) {
    StatusHttpLimits limits;
    limits.stream_interval = 1ms;  // as fast as the socket takes them: its buffers fill at once
    limits.write_timeout = 300ms;
    limits.render_reuse = 0ms;
    serve_status(limits);
    const auto result = with_clients([&] {
        RawClient stuck(port_, get("/api/events", kEventStream), 4096);
        // It is followed at first (counted), then dropped.
        bool counted = false;
        for (int i = 0; i < 40 && !counted; ++i) {
            HttpRequest r;
            r.target = "/metrics";
            counted = http_request(port_, r).body.find("ensemble_status_event_streams 1") !=
                      std::string::npos;
        }
        std::vector<int> codes;
        // Meanwhile, other clients are answered at once.
        for (int i = 0; i < 20; ++i) {
            HttpRequest r;
            r.target = "/api/status";
            r.timeout = 2s;
            codes.push_back(http_request(port_, r).status);
            std::this_thread::sleep_for(50ms);
        }
        // The stuck client is dropped once a write to it waits past write_timeout (the kernel's
        // buffers take a few seconds to fill), and never read meanwhile.
        std::string metrics;
        for (int i = 0;
             i < 200 && metrics.find("ensemble_status_event_streams 0") == std::string::npos; ++i) {
            HttpRequest r;
            r.target = "/metrics";
            metrics = http_request(port_, r).body;
            std::this_thread::sleep_for(50ms);
        }
        // Reading now, it finds what was sent, then the end.
        stuck.read_for(10s);
        return std::make_tuple(codes, metrics, stuck.closed(), counted);
    });
    const auto& [codes, metrics, closed, counted] = result;
    EXPECT_TRUE(counted);
    EXPECT_EQ(std::count(codes.begin(), codes.end(), 200), 20);
    EXPECT_NE(metrics.find("ensemble_status_event_streams 0"), std::string::npos) << metrics;
    EXPECT_TRUE(closed);
}

}  // namespace
