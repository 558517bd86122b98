// ensembled's status listener with real llama-server ports, seen as its users see it: the page
// in headless Chromium after a swap (DOM asserted, screenshots kept in the test's output
// folder), /metrics checked by promtool while a port crash-loops, and hundreds of followers of
// the event stream — some never reading — while the supervisor keeps answering; and a web app
// from another origin calling the front door and a model port, in the same browser.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <iostream>
#include <regex>
#include <thread>

#include "tests/support/promtool.h"
#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kWeightsBytes = 64 << 20;

class StatusPageTest : public SupervisorFixture {
  protected:
    void SetUp() override {
        SupervisorFixture::SetUp();
        write_weights(kWeightsBytes);  // the config names it: every test needs it there
    }

    std::string extra_supervisor_settings() const override {
        for (http_port_ = free_port(); http_port_ == port_a_ || http_port_ == port_b_;)
            http_port_ = free_port();
        door_port_ = free_port();  // (never one handed out before in this process)
        return "  http: 127.0.0.1:" + std::to_string(http_port_) +
               "\n  front_door: {listen: 127.0.0.1:" + std::to_string(door_port_) + "}\n";
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

    // A model the fake engine loads like llama.cpp loads a GGUF, slowly: it maps weights.bin
    // and reads it over 4 s.
    std::string extra_models() const override {
        const auto weights = (dir_ / "weights.bin").string();
        return "  fake-mapped: {engine: fake, path: " + weights + ", args: [--map-file, " +
               weights + ", --map-seconds, \"4\"]}\n";
    }

    void write_weights(std::size_t bytes) {
        std::ofstream out(dir_ / "weights.bin", std::ios::binary);
        const std::string block(1 << 20, 'w');
        for (std::size_t written = 0; written < bytes; written += block.size())
            out << block;
    }

    mutable unsigned short http_port_ = 0;
    mutable unsigned short door_port_ = 0;
};

// Runs `command` on a pseudo-terminal, as a person at a terminal would, and returns all it
// printed there.
std::string run_on_terminal(const std::string& command) {
    // POSIX's pseudo-terminal calls (forkpty lives in different headers on Linux and macOS).
    const int terminal = ::posix_openpt(O_RDWR | O_NOCTTY);
    EXPECT_GE(terminal, 0);
    EXPECT_EQ(::grantpt(terminal), 0);
    EXPECT_EQ(::unlockpt(terminal), 0);
    const std::string device = ::ptsname(terminal);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::setsid();
        const int side = ::open(device.c_str(), O_RDWR);
        winsize size{40, 120, 0, 0};
        ::ioctl(side, TIOCSWINSZ, &size);
        for (int fd : {0, 1, 2})
            ::dup2(side, fd);
        ::close(side);
        ::close(terminal);
        ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    std::string out;
    char buffer[4096];
    for (;;) {
        const auto n = ::read(terminal, buffer, sizeof buffer);
        if (n <= 0) break;  // EIO once the child has exited and the terminal is empty
        out.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(terminal);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return out;
}

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

    // The front door is in the status once it has linked to ensembled.
    json door = json::object();
    for (int i = 0; i < 100 && door.value("state", "") != "serving"; ++i) {
        const auto status = json::parse(cli("--json status").out, nullptr, false);
        if (!status.is_discarded() && status["result"]["front_door"].is_object())
            door = status["result"]["front_door"];
        std::this_thread::sleep_for(50ms);
    }
    ASSERT_EQ(door.value("state", ""), "serving") << door.dump();
    EXPECT_EQ(door.value("listen", ""), "127.0.0.1:" + std::to_string(door_port_));
    EXPECT_TRUE(process_alive(door.value("pid", 0))) << door.dump();
    const auto human = cli("status").out;
    EXPECT_NE(human.find("front door 127.0.0.1:" + std::to_string(door_port_) + ": serving, pid " +
                         std::to_string(door.value("pid", 0)) + ", up "),
              std::string::npos)
        << human;

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
    const auto door_at = dom.find("<p id=\"front-door\" data-state=\"serving\">");
    ASSERT_NE(door_at, std::string::npos) << dom;
    const auto door_line = dom.substr(door_at, dom.find("</p>", door_at) - door_at);
    EXPECT_NE(door_line.find("127.0.0.1:" + std::to_string(door_port_)), std::string::npos)
        << door_line;
    EXPECT_NE(door_line.find("pid " + std::to_string(door.value("pid", 0))), std::string::npos)
        << door_line;
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

// Serves `page` to every request on a loopback port of its own (another origin than the
// fleet's ports), until destroyed.
class PageServer {
  public:
    explicit PageServer(std::string page) : page_(std::move(page)) {
        listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
        EXPECT_EQ(::listen(listener_, 16), 0);
        socklen_t length = sizeof address;
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
        port_ = ntohs(address.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~PageServer() {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }

  private:
    void serve() {
        while (!stop_) {
            pollfd ready{listener_, POLLIN, 0};
            if (::poll(&ready, 1, 100) != 1) continue;
            const int client = ::accept(listener_, nullptr, nullptr);
            if (client < 0) continue;
            char request[8192];
            pollfd readable{client, POLLIN, 0};  // (a connection opened ahead, never used)
            if (::poll(&readable, 1, 1000) == 1) (void)::recv(client, request, sizeof request, 0);
            const std::string answer =
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: " +
                std::to_string(page_.size()) + "\r\nConnection: close\r\n\r\n" + page_;
            (void)::send(client, answer.data(), answer.size(), MSG_NOSIGNAL);
            ::close(client);
        }
    }

    std::string page_;
    int listener_ = -1;
    unsigned short port_ = 0;
    std::atomic<bool> stop_ = false;
    std::thread thread_;
};

// A web app in a real browser, from an origin of its own, calls the front door and a model
// port as it would call llama-server, its key in Authorization: the browser's preflight and its
// rules decide, not our reading of them. Each call's line reads NAME:STATUS, or NAME:blocked
// when the browser would not let the page send it or read its answer.
TEST_F(StatusPageTest, AWebPageFromAnotherOriginCallsTheFrontDoorAndAModelPort) {
    const std::string key = "a-key-for-the-page-0123";
    supervisor_ = start_supervisor({{"ENSEMBLE_API_KEY", key}});
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " tiny").exit_code, 0);
    const std::string chat =
        R"({"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4})";
    std::string page = R"(<!doctype html><pre id="out"></pre><script>
const out = document.getElementById("out");
async function call(name, url, init) {
  try {
    const r = await fetch(url, init);
    await r.text();
    out.textContent += name + ":" + r.status + "\n";
  } catch (e) { out.textContent += name + ":blocked\n"; }
}
const key = { "Authorization": "Bearer KEY" };
const post = { method: "POST", headers: { ...key, "Content-Type": "application/json" },
               body: 'CHAT' };
(async () => {
  await call("door-models", "DOOR/v1/models", { headers: key });
  await call("door-chat", "DOOR/v1/chat/completions", post);
  await call("port-models", "PORT/v1/models", { headers: key });
  await call("port-chat", "PORT/v1/chat/completions", post);
  await call("port-wrong-key", "PORT/v1/models", { headers: { "Authorization": "Bearer no" } });
  out.textContent += "done\n";
})();
</script>)";
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"KEY", key},
                                   {"CHAT", chat},
                                   {"DOOR", "http://127.0.0.1:" + std::to_string(door_port_)},
                                   {"PORT", "http://127.0.0.1:" + std::to_string(port_a_)}}) {
        for (auto at = page.find(from); at != std::string::npos;
             at = page.find(from, at + to.size()))
            page.replace(at, from.size(), to);
    }
    PageServer server(page);
    // The front door answers once it has linked to ensembled.
    auto keyed = chat_request(chat);
    keyed.headers["Authorization"] = "Bearer " + key;
    for (int i = 0; i < 100 && http_request(door_port_, keyed).status != 200; ++i)
        std::this_thread::sleep_for(50ms);

    const auto out = dir_ / "web-app.out";
    const std::string cmd = "timeout 90 " + std::string(ENSEMBLE_TEST_CHROMIUM) +
                            " --headless --no-sandbox --disable-gpu --no-first-run"
                            " --user-data-dir=" +
                            (dir_ / "chromium-profile").string() +
                            " --virtual-time-budget=10000 --dump-dom " + server.url() + " > " +
                            out.string() + " 2> " + (dir_ / "web-app.err").string();
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream in(out);
    const std::string dom{std::istreambuf_iterator<char>(in), {}};
    for (const std::string line : {"door-models:200\n", "door-chat:200\n", "port-models:200\n",
                                   "port-chat:200\n", "port-wrong-key:401\n", "done"})
        EXPECT_NE(dom.find(line), std::string::npos) << line << " in " << dom;
}

TEST_F(StatusPageTest, MetricsStayValidAndAnsweredWhileAPortCrashLoops) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " tiny").exit_code, 0);
    cli("load " + std::to_string(port_b_) + " fake-dead");  // its engine exits at start
    int scrapes = 0;
    std::string page;
    const auto failed =
        "ensemble_port_state{port=\"" + std::to_string(port_b_) + "\",state=\"failed\"} 1";
    // ensembled's view of the front door is on its page too, there to see when the front door
    // itself is not.
    const std::string door_serving = R"(ensemble_front_door_process_state{state="serving"} 1)";
    const auto deadline = std::chrono::steady_clock::now() + 90s;
    while (
        (page.find(failed) == std::string::npos || page.find(door_serving) == std::string::npos) &&
        std::chrono::steady_clock::now() < deadline) {
        const auto r = get("/metrics");
        ASSERT_EQ(r.status, 200) << r.error;
        page = r.body;
        ++scrapes;
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_NE(page.find(failed), std::string::npos) << page;
    EXPECT_NE(page.find(door_serving), std::string::npos) << page;
    EXPECT_NE(page.find(R"(ensemble_front_door_process_state{state="restarting"} 0)"),
              std::string::npos)
        << page;
    EXPECT_EQ(metric(page, "ensemble_front_door_process_restarts_total"), 0) << page;
    EXPECT_GE(metric(page, "ensemble_front_door_process_uptime_seconds"), 0) << page;
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

TEST_F(StatusPageTest, LoadProgressClimbsInStatusMetricsEventsAndTheTerminalsBar) {
    supervisor_ = start_supervisor();
    const auto port = std::to_string(port_a_);
    // Someone loads at a terminal while the status listener is watched.
    auto terminal = std::async(std::launch::async, [&] {
        return run_on_terminal(cli_bin_ + " --config " + (dir_ / "ensemble.yaml").string() +
                               " load " + port + " fake-mapped");
    });
    std::vector<double> fractions;
    bool eta_seen = false;
    std::string metrics_while_loading;
    while (terminal.wait_for(200ms) != std::future_status::ready) {
        const auto status = json::parse(get("/api/status").body, nullptr, false);
        if (status.is_discarded()) continue;
        for (const auto& p : status["ports"]) {
            if (p["port"] != port_a_ || !p.contains("load_progress")) continue;
            const auto& load = p["load_progress"];
            EXPECT_EQ(p["state"], "loading");
            EXPECT_EQ(load["measure"], "mapping");
            EXPECT_EQ(load["total_bytes"], kWeightsBytes);
            fractions.push_back(load["fraction"].get<double>());
            eta_seen = eta_seen || load.contains("eta_s");
            if (eta_seen && metrics_while_loading.empty())
                metrics_while_loading = get("/metrics").body;
        }
    }
    const auto drawn = terminal.get();
    ASSERT_GE(fractions.size(), 3U) << "a 4 s load, seen every 200 ms";
    EXPECT_TRUE(std::is_sorted(fractions.begin(), fractions.end()));
    EXPECT_GT(fractions.back(), fractions.front());
    EXPECT_LE(fractions.back(), 0.99) << "never 100 % before ready";
    EXPECT_TRUE(eta_seen);
    EXPECT_NE(metrics_while_loading.find("ensemble_port_load_progress{port=\"" + port + "\""),
              std::string::npos);
    EXPECT_NE(metrics_while_loading.find("ensemble_port_load_remaining_seconds{port=\"" + port),
              std::string::npos)
        << metrics_while_loading;
    EXPECT_EQ(port_status(port_a_)["state"], "ready");
    // The bar, redrawn in place, ends full.
    EXPECT_NE(drawn.find("\x1b["), std::string::npos) << drawn;
    EXPECT_NE(drawn.find(port + " fake-mapped  [#"), std::string::npos) << drawn;
    EXPECT_NE(drawn.find("of 64.0 MiB"), std::string::npos) << drawn;
    EXPECT_NE(drawn.find("[########################] 100 %"), std::string::npos) << drawn;
    // Each quarter the load passes is an event.
    const auto events = json::parse(cli("--json events -n 100").out)["result"]["events"];
    std::vector<int> quarters;
    static const std::regex percent(R"re(^'fake-mapped' ([0-9]+) %)re");
    for (const auto& e : events) {
        std::smatch m;
        const auto message = e["message"].get<std::string>();
        if (e["kind"] == "loading" && std::regex_search(message, m, percent))
            quarters.push_back(std::stoi(m[1].str()) / 25);
    }
    EXPECT_EQ(quarters, (std::vector<int>{1, 2, 3})) << events.dump(1);

    // Not on a terminal: plain lines, no escape codes.
    ASSERT_EQ(cli("unload " + port).exit_code, 0);
    const auto plain = cli("load " + port + " fake-mapped");
    EXPECT_EQ(plain.exit_code, 0) << plain.out;
    EXPECT_EQ(plain.out.find("\x1b["), std::string::npos) << plain.out;
    EXPECT_NE(plain.out.find(port + " fake-mapped: loading "), std::string::npos) << plain.out;
    EXPECT_NE(plain.out.find(port + " fake-mapped: ready"), std::string::npos) << plain.out;

    // --no-wait: back at once; the load goes on.
    ASSERT_EQ(cli("unload " + port).exit_code, 0);
    const auto begin = std::chrono::steady_clock::now();
    const auto quick = cli("load --no-wait " + port + " fake-mapped");
    EXPECT_LT(std::chrono::steady_clock::now() - begin, 2s);
    EXPECT_EQ(quick.exit_code, 0) << quick.out;
    EXPECT_NE(quick.out.find("accepted: load " + port + " fake-mapped"), std::string::npos)
        << quick.out;
    EXPECT_NE(port_status(port_a_)["state"], "ready");
    // And the page shows the load as it goes.
    for (int i = 0; i < 50 && !port_status(port_a_).contains("load_progress"); ++i)
        std::this_thread::sleep_for(100ms);
    const auto card = port_card(chromium("--dump-dom"), port_a_);
    EXPECT_NE(card.find("<div class=\"bar load-bar\"><div class=\"progress\" style=\"width: "),
              std::string::npos)
        << card;
    EXPECT_NE(card.find("<p class=\"load\">loading "), std::string::npos) << card;
    EXPECT_EQ(wait_for_state(port_a_, "ready")["state"], "ready");

    // What is plainly wrong is refused before it is accepted; what only ensembled can find
    // out (the port serves another model) is an event, since nobody waits for the reply.
    const auto typo = cli("load --no-wait " + std::to_string(port_b_) + " no-such-model");
    EXPECT_EQ(typo.exit_code, 1) << typo.out;
    EXPECT_NE(typo.out.find("unknown model 'no-such-model'"), std::string::npos) << typo.out;
    const auto busy = cli("load --no-wait " + port + " tiny");
    EXPECT_EQ(busy.exit_code, 0) << busy.out;
    std::string told;
    for (int i = 0; i < 50 && told.find("command_failed") == std::string::npos; ++i) {
        std::this_thread::sleep_for(100ms);
        told = cli("events -n 5").out;
    }
    EXPECT_NE(told.find("load (not waited for) failed: port " + port), std::string::npos) << told;
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
