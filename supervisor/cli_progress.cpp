#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <iostream>
#include <map>
#include <sstream>

#include "supervisor/cli.h"
#include "supervisor/control_client.h"

namespace ensemble::cli {

namespace {

using nlohmann::json;

constexpr auto kPollEvery = std::chrono::milliseconds(500);
constexpr int kBarWidth = 24;

// What one port shows while a command moves it: a swap's incoming worker when there is one.
struct PortView {
    int port = 0;
    std::string model;
    std::string state;
    std::optional<json> load;  // load_progress

    bool operator==(const PortView&) const = default;
};

PortView view_of(const json& p) {
    PortView v;
    v.port = p.value("port", 0);
    const auto& moving = p.contains("incoming") ? p["incoming"] : p;
    v.model = moving.value("model", "");
    v.state = moving.value("state", "");
    if (moving.contains("load_progress")) v.load = moving["load_progress"];
    return v;
}

int percent(const PortView& v) {
    if (v.state == "ready") return 100;
    return v.load ? static_cast<int>(std::floor(v.load->value("fraction", 0.0) * 100)) : 0;
}

std::string eta_text(const PortView& v) {
    // The model file is in (progress stops at 0.99): what is left is the engine's own start.
    if (v.load && v.load->value("measure", "") == "mapping" &&
        v.load->value("fraction", 0.0) >= 0.99)
        return "weights read, the engine is starting";
    if (!v.load || !v.load->contains("eta_s")) return "";
    const auto seconds = static_cast<long>(std::ceil((*v.load)["eta_s"].get<double>()));
    return seconds < 120 ? "about " + std::to_string(seconds) + " s left"
                         : "about " + std::to_string((seconds + 59) / 60) + " min left";
}

// "8100 tiny   [##########..............]  41 %  105 MiB of 257 MiB  about 3 s left  loading"
std::string bar_line(const PortView& v) {
    const int pct = percent(v);
    const int filled = pct * kBarWidth / 100;
    std::ostringstream line;
    line << v.port << ' ' << v.model << "  [" << std::string(static_cast<std::size_t>(filled), '#')
         << std::string(static_cast<std::size_t>(kBarWidth - filled), '.') << "] ";
    line << (pct < 10 ? "  " : pct < 100 ? " " : "") << pct << " %";
    if (v.load) {
        line << "  " << human_bytes(v.load->value("done_bytes", 0ULL)) << " of "
             << human_bytes(v.load->value("total_bytes", 0ULL));
    }
    if (const auto eta = eta_text(v); !eta.empty()) line << "  " << eta;
    line << "  " << v.state;
    return line.str();
}

// "8100 tiny: loading 41 % (105 MiB of 257 MiB), about 3 s left"
std::string plain_line(const PortView& v) {
    std::ostringstream line;
    line << v.port << ' ' << v.model << ": " << v.state;
    if (v.load && v.state != "ready") {
        line << ' ' << percent(v) << " % (" << human_bytes(v.load->value("done_bytes", 0ULL))
             << " of " << human_bytes(v.load->value("total_bytes", 0ULL)) << ')';
        if (const auto eta = eta_text(v); !eta.empty()) line << ", " << eta;
    }
    return line.str();
}

std::size_t terminal_width() {
    winsize size{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 10) return size.ws_col;
    return 80;
}

// Draws the ports a command moves: on a terminal, one bar per port redrawn in place; otherwise
// a line whenever a port changes state or passes a tenth of its load.
class ProgressView {
  public:
    explicit ProgressView(bool terminal) : terminal_(terminal) {}

    void show(const std::vector<PortView>& ports) {
        if (terminal_) {
            // Up over the last frame, then each line cut to the width (a wrapped line would
            // throw the count off), and whatever is left below cleared.
            if (lines_ > 0) std::cerr << "\x1b[" << lines_ << 'A';
            const auto width = terminal_width();
            for (const auto& v : ports)
                std::cerr << '\r' << bar_line(v).substr(0, width - 1) << "\x1b[K\n";
            std::cerr << "\x1b[J" << std::flush;
            lines_ = static_cast<int>(ports.size());
            return;
        }
        for (const auto& v : ports) {
            auto& last = shown_[v.port];
            const int tenth = percent(v) / 10;
            if (last.first == v.state && last.second == tenth) continue;
            last = {v.state, tenth};
            std::cerr << plain_line(v) << '\n';
        }
    }

  private:
    bool terminal_;
    int lines_ = 0;  // drawn in the last frame, to go back over
    std::map<int, std::pair<std::string, int>> shown_;
};

// The ports `request` moves, as `status` shows them now.
std::vector<PortView> moving_ports(const json& status, const protocol::ControlRequest& request) {
    std::vector<PortView> out;
    for (const auto& p : status["ports"]) {
        const bool mine = request.verb == protocol::Verb::profile_load
                              ? p.value("profile", "") == request.profile
                              : request.port && p.value("port", 0) == *request.port;
        if (mine) out.push_back(view_of(p));
    }
    return out;
}

}  // namespace

Result<json> call_with_progress(const std::filesystem::path& socket,
                                const protocol::ControlRequest& request) {
    const bool terminal = ::isatty(STDERR_FILENO) == 1;
    auto reply = std::async(std::launch::async, [&] { return call_supervisor(socket, request); });
    ProgressView view(terminal);
    protocol::ControlRequest status_request;
    status_request.verb = protocol::Verb::status;
    std::vector<PortView> last;
    while (reply.wait_for(kPollEvery) != std::future_status::ready) {
        const auto status = call_supervisor(socket, status_request);
        if (!status || !status->value("ok", false)) continue;  // the reply will say why
        last = moving_ports((*status)["result"], request);
        view.show(last);
    }
    auto result = reply.get();
    // The last frame: where each port ended.
    if (result && !last.empty()) {
        if (const auto status = call_supervisor(socket, status_request);
            status && status->value("ok", false))
            view.show(moving_ports((*status)["result"], request));
    }
    return result;
}

}  // namespace ensemble::cli
