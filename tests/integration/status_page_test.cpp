// ensembled's status listener with real llama-server ports, seen as its users see it: the page
// in headless Chromium after a swap (DOM asserted, screenshots kept in the test's output
// folder), /metrics checked by promtool while a port crash-loops, and hundreds of followers of
// the event stream — some never reading — while the supervisor keeps answering.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <future>
#include <iostream>
#include <regex>

#include "tests/support/promtool.h"
#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

class StatusPageTest : public SupervisorFixture {
  protected:
    std::string extra_supervisor_settings() const override {
        for (http_port_ = free_port(); http_port_ == port_a_ || http_port_ == port_b_;)
            http_port_ = free_port();
        return "  http: 127.0.0.1:" + std::to_string(http_port_) + "\n";
    }

    HttpResponse get(const std::string& target) {
        HttpRequest r;
        r.target = target;
        r.timeout = 5s;
        return http_request(http_port_, r);
    }

    // Headless Chromium on the page: `what` is --dump-dom (returned) or --screenshot=FILE.
    std::string chromium(const std::string& what, const std::string& window = "1100,900") {
        const auto out = dir_ / "chromium.out";
        const std::string cmd = "timeout 90 " + std::string(ENSEMBLE_TEST_CHROMIUM) +
                                " --headless --no-sandbox --disable-gpu --hide-scrollbars"
                                " --no-first-run --user-data-dir=" +
                                (dir_ / "chromium-profile").string() + " --window-size=" + window +
                                // Time for the page's scripts to fetch and draw the stream.
                                " --virtual-time-budget=5000 " + what +
                                " http://127.0.0.1:" + std::to_string(http_port_) + "/ > " +
                                out.string() + " 2> " + (dir_ / "chromium.err").string();
        EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
        std::ifstream in(out);
        return {std::istreambuf_iterator<char>(in), {}};
    }

    mutable unsigned short http_port_ = 0;
};

// The opening tag of the port's card, and the card's text up to the next one.
std::string port_card(const std::string& dom, int port) {
    const auto at = dom.find("<article class=\"port\" data-port=\"" + std::to_string(port) + "\"");
    if (at == std::string::npos) return "";
    return dom.substr(at, dom.find("</article>", at) - at);
}

bool is_png(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    char signature[8] = {};
    in.read(signature, sizeof signature);
    return std::string(signature, 8) == "\x89PNG\r\n\x1a\n";
}

TEST_F(StatusPageTest, ChromiumShowsThePortsTheirStatesMemoryBarsAndTheSwap) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("profile load pair").exit_code, 0);
    const auto swap = cli("swap " + std::to_string(port_a_) + " tiny-two");
    ASSERT_EQ(swap.exit_code, 0) << swap.out;

    const auto dom = chromium("--dump-dom");
    const auto a = port_card(dom, port_a_);
    const auto b = port_card(dom, port_b_);
    ASSERT_FALSE(a.empty()) << dom;
    ASSERT_FALSE(b.empty()) << dom;
    EXPECT_NE(a.find("data-state=\"ready\""), std::string::npos) << a;
    EXPECT_NE(a.find("<span class=\"model\">tiny-two</span>"), std::string::npos) << a;
    EXPECT_NE(b.find("<span class=\"model\">tiny-two</span>"), std::string::npos) << b;
    // A memory bar: the estimate and the measure, drawn against the machine's memory.
    static const std::regex bar(
        R"re(<div class="bar memory"[^>]*><div class="estimate" style="width: ([0-9.]+)%;"></div><div class="measured" style="width: ([0-9.]+)%;"></div>)re");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(a, m, bar)) << a;
    EXPECT_GT(std::stod(m[1].str()), 0.0);
    EXPECT_GT(std::stod(m[2].str()), 0.0);
    static const std::regex measured(R"re(data-measured-bytes="([0-9]+)")re");
    ASSERT_TRUE(std::regex_search(a, m, measured));
    EXPECT_GT(std::stoull(m[1].str()), 1ULL << 20);
    // The swap is among the events, and the connection is live.
    EXPECT_NE(dom.find("data-kind=\"swap\""), std::string::npos) << dom;
    EXPECT_NE(dom.find("<span id=\"live\" class=\"on\">live</span>"), std::string::npos) << dom;

    // Screenshots, for a person to look at: a desk and a phone.
    for (const auto& [name, window] : {std::pair{"status-page.png", "1100,900"},
                                       std::pair{"status-page-phone.png", "390,844"}}) {
        std::filesystem::remove(dir_ / name);
        chromium("--screenshot=" + (dir_ / name).string(), window);
        EXPECT_TRUE(is_png(dir_ / name)) << name;
        EXPECT_GT(std::filesystem::file_size(dir_ / name), 10000U) << name;
    }
}

TEST_F(StatusPageTest, MetricsStayValidAndAnsweredWhileAPortCrashLoops) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " tiny").exit_code, 0);
    cli("load " + std::to_string(port_b_) + " fake-dead");  // its engine exits at start
    int scrapes = 0;
    std::string page;
    const auto failed =
        "ensemble_port_state{port=\"" + std::to_string(port_b_) + "\",state=\"failed\"} 1";
    const auto deadline = std::chrono::steady_clock::now() + 90s;
    while (page.find(failed) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
        const auto r = get("/metrics");
        ASSERT_EQ(r.status, 200) << r.error;
        page = r.body;
        ++scrapes;
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_NE(page.find(failed), std::string::npos) << page;
    EXPECT_GT(scrapes, 10);
    const auto verdict = promtool_check_metrics(page);
    EXPECT_TRUE(verdict.ok) << verdict.output << "\n" << page;
    static const std::regex restarts(
        R"re(ensemble_port_restarts_total\{port="([0-9]+)",model="fake-dead"\} ([0-9]+))re");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(page, m, restarts)) << page;
    EXPECT_GE(std::stoi(m[2].str()), 3);
    EXPECT_NE(page.find("ensemble_port_state{port=\"" + std::to_string(port_a_) +
                        "\",state=\"ready\"} 1"),
              std::string::npos);
    // The same fleet as the CLI's status.
    const auto api = json::parse(get("/api/status").body);
    EXPECT_EQ(api["ports"].size(), status()["ports"].size());
}

// Connections to the status listener that follow /api/events.
class Followers {
  public:
    Followers(unsigned short port, int count, bool reading) {
        const std::string request =
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        for (int i = 0; i < count; ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            if (!reading) {
                const int small = 4096;
                ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
            }
            sockaddr_in address{};
            address.sin_family = AF_INET;
            address.sin_port = htons(port);
            address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0)
                ::send(fd, request.data(), request.size(), 0);
            fds_.push_back(fd);
            statuses_.push_back(0);
        }
    }
    ~Followers() {
        for (int fd : fds_)
            ::close(fd);
    }
    Followers(const Followers&) = delete;
    Followers& operator=(const Followers&) = delete;

    // Reads for `time`, counting each follower's status messages.
    void read_for(std::chrono::milliseconds time) {
        std::vector<pollfd> polls;
        for (int fd : fds_)
            polls.push_back({fd, POLLIN, 0});
        char buffer[65536];
        const auto end = std::chrono::steady_clock::now() + time;
        while (std::chrono::steady_clock::now() < end) {
            if (::poll(polls.data(), polls.size(), 50) <= 0) continue;
            for (std::size_t i = 0; i < polls.size(); ++i) {
                if (!(polls[i].revents & POLLIN)) continue;
                const auto n = ::recv(polls[i].fd, buffer, sizeof buffer, 0);
                if (n <= 0) {
                    polls[i].fd = -1;
                    continue;
                }
                const std::string_view text(buffer, static_cast<std::size_t>(n));
                for (auto at = text.find("event: status"); at != std::string_view::npos;
                     at = text.find("event: status", at + 1))
                    ++statuses_[i];
            }
        }
    }
    int fewest_statuses() const { return *std::min_element(statuses_.begin(), statuses_.end()); }

  private:
    std::vector<int> fds_;
    std::vector<int> statuses_;
};

TEST_F(StatusPageTest, HundredsOfFollowersSomeNeverReadingDoNotStallTheSupervisor) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " tiny").exit_code, 0);
    Followers stuck(http_port_, 50, false);
    Followers viewers(http_port_, 300, true);
    // While they follow, the operator's commands and the port answer as usual.
    std::vector<std::chrono::milliseconds> status_times;
    auto reader = std::async(std::launch::async, [&] { viewers.read_for(4s); });
    for (int i = 0; i < 5; ++i) {
        const auto begin = std::chrono::steady_clock::now();
        EXPECT_EQ(cli("status").exit_code, 0);
        status_times.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - begin));
        EXPECT_EQ(chat(port_a_), 200);
        std::this_thread::sleep_for(300ms);
    }
    reader.get();
    EXPECT_GE(viewers.fewest_statuses(), 2) << "every viewer is sent the status each second";
    std::sort(status_times.begin(), status_times.end());
    // A generous bound for a loaded 2-core machine: a stalled loop would take seconds.
    EXPECT_LT(status_times.back(), 2000ms);
    const auto metrics = get("/metrics").body;
    EXPECT_NE(metrics.find("ensemble_status_event_streams 350"), std::string::npos) << metrics;
    std::cout << "[ measured ] 'ensemble status' with 350 followers: median "
              << status_times[status_times.size() / 2].count() << " ms, slowest "
              << status_times.back().count() << " ms\n";
}

}  // namespace
