#include "worker/front_door.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>

#include <algorithm>
#include <array>
#include <ctime>
#include <nlohmann/json.hpp>

#include "protocol/bounded_json.h"
#include "protocol/json_scan.h"
#include "worker/ollama_api.h"

namespace ensemble {

namespace {

using nlohmann::json;

// How a port's state reads to a client: loaded, loading or not loaded.
std::string client_state(const protocol::Route& route) {
    if (route.port == 0) return "not loaded";
    if (route.state == "ready") return "loaded";
    if (route.state == "starting" || route.state == "loading" || route.state == "backoff" ||
        route.state == "waiting")
        return "loading";
    if (route.state == "failed") return "failed";
    return "not loaded";
}

// The name a request body gives its model: `model`, or Ollama's older `name`; "" if none (or
// the body is not a JSON object: the model port would refuse it, and so does the front door).
std::string requested_model(std::string_view body) {
    static constexpr std::array<std::string_view, 2> kKeys{"model", "name"};
    const auto scan = scan_top_level_members(body, kKeys);
    if (!scan || !scan->is_object) return {};
    std::string found[2];
    for (const auto& value : scan->values) {  // the last of duplicates wins, as for parsers
        auto parsed = parse_bounded_json(body.substr(value.begin, value.end - value.begin));
        found[value.key] = parsed && parsed->is_string() ? parsed->get<std::string>() : "";
    }
    return found[0].empty() ? found[1] : found[0];
}

bool is_ollama(std::string_view target) {
    return target.starts_with("/api/");
}

http::response<http::string_body> error_for(std::string_view target, const ApiError& error,
                                            bool keep_alive) {
    return is_ollama(target) ? ollama::error_response(error, keep_alive)
                             : make_error_response(error, keep_alive);
}

ApiError refusal_error(const Error& refusal) {
    if (refusal.code == "model_not_found" || refusal.code == "unknown_model")
        return {http::status::not_found, "invalid_request_error", "model_not_found",
                refusal.message};
    const bool transient = refusal.code == "queue_full" || refusal.code == "load_timeout" ||
                           refusal.code == "supervisor_unreachable";
    return {http::status::service_unavailable, "server_error", refusal.code, refusal.message,
            transient ? 5 : 0};
}

}  // namespace

const protocol::Route* find_route(const std::vector<protocol::Route>& routes,
                                  std::string_view name) {
    if (name.empty()) return nullptr;
    const auto base = ollama::without_latest(std::string(name));
    for (const auto& route : routes) {
        for (const auto& wanted : {std::string(name), base}) {
            if (route.handle == wanted || std::find(route.aliases.begin(), route.aliases.end(),
                                                    wanted) != route.aliases.end())
                return &route;
        }
    }
    return nullptr;
}

RouteAction action_for(const protocol::Route& route, bool demand_pending) {
    const auto state = client_state(route);
    if (state == "loaded") return RouteAction::forward;
    if (state == "loading" || demand_pending) return RouteAction::wait;
    return route.on_demand ? RouteAction::demand : RouteAction::not_loaded;
}

// A model port, as the proxy's target: ready while its route says so.
class FrontDoor::PortTarget final : public ProxyTarget {
  public:
    PortTarget(const std::string& host, int port)
        : endpoint_(
              StreamEndpoint::tcp(asio::ip::make_address(host), static_cast<unsigned short>(port))),
          port_(port) {}

    void update(const protocol::Route* route) {
        const std::string serving = route != nullptr ? route->handle : "";
        const bool ready = route != nullptr && route->state == "ready";
        // Another model, or the same one after it stopped: pooled connections are not reused.
        if (serving != handle_ || (ready_ && !ready)) ++generation_;
        handle_ = serving;
        ready_ = ready;
    }

    bool ready() const override { return ready_; }
    awaitable<bool> wait_ready(Clock::time_point deadline) override {
        // The front door forwards only to a ready port; this is the proxy's retry after a
        // refused connection, while the port's worker is replaced (its socket stays open).
        asio::steady_timer pause(co_await asio::this_coro::executor);
        while (!ready_ && Clock::now() < deadline) {
            pause.expires_after(std::chrono::milliseconds(50));
            boost::system::error_code ec;
            co_await pause.async_wait(on_error(ec));
        }
        co_return ready_;
    }
    const StreamEndpoint& endpoint() const override { return endpoint_; }
    std::uint64_t generation() const override { return generation_; }
    void on_child_exit() override {}
    void note_answer() override {}
    ApiError unavailable() const override {
        return {http::status::service_unavailable, "server_error", "port_unavailable",
                "port " + std::to_string(port_) + (handle_.empty() ? "" : " ('" + handle_ + "')") +
                    " is not answering; retry shortly",
                2};
    }

  private:
    StreamEndpoint endpoint_;
    int port_;
    std::string handle_;
    bool ready_ = false;
    std::uint64_t generation_ = 0;
};

struct FrontDoor::Waiter {
    std::string handle;
    asio::steady_timer* timer;
    std::optional<Error> refusal;  // the demand for it was refused
};

FrontDoor::FrontDoor(asio::io_context& io, FrontDoorConfig config)
    : HttpListener(io, config),
      config_(std::move(config)),
      started_unix_(static_cast<long>(std::time(nullptr))) {}

FrontDoor::~FrontDoor() = default;

void FrontDoor::set_routes(std::vector<protocol::Route> routes) {
    routes_ = std::move(routes);
    for (auto& [port, target] : targets_) {
        const protocol::Route* serving = nullptr;
        for (const auto& route : routes_) {
            if (route.port == port) serving = &route;
        }
        target->update(serving);
    }
    wake_waiters();
}

void FrontDoor::demand_answered(const protocol::DemandResult& result) {
    demands_.erase(result.model);
    if (result.refusal) {
        spdlog::info("front door: '{}' was not loaded: {}", result.model, result.refusal->message);
        for (auto* waiter : waiters_) {
            if (waiter->handle == result.model) waiter->refusal = result.refusal;
        }
    }
    wake_waiters();
}

void FrontDoor::set_connected(bool connected) {
    connected_ = connected;
    if (connected) return;
    // Demands outstanding are lost with the link: their requests are told so, not left waiting.
    for (const auto& [handle, _] : demands_) {
        for (auto* waiter : waiters_) {
            if (waiter->handle == handle) {
                waiter->refusal = Error{"supervisor_unreachable",
                                        "ensembled, which loads models on demand, is not "
                                        "reachable; retry shortly"};
            }
        }
    }
    demands_.clear();
    wake_waiters();
}

void FrontDoor::wake_waiters() {
    for (auto* waiter : waiters_)
        waiter->timer->cancel();
}

FrontDoor::PortTarget& FrontDoor::target_for(int port) {
    auto& target = targets_[port];
    if (!target) {
        target = std::make_unique<PortTarget>(config_.ports_host, port);
        for (const auto& route : routes_) {
            if (route.port == port) target->update(&route);
        }
        proxies_[port] = std::make_unique<EngineProxy>(*target, config_.proxy);
    }
    return *target;
}

std::string FrontDoor::known_models() const {
    std::string names;
    for (const auto& route : routes_)
        names += (names.empty() ? "" : ", ") + route.handle + " (" + client_state(route) + ")";
    return names.empty() ? "none" : names;
}

namespace {

// Whether the client closed its connection (it sent nothing more: a pipelined request waits).
bool client_closed(beast::tcp_stream& stream) {
    char byte = 0;
    const auto n = ::recv(stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// A waiting request looks at its client this often: one that left gives up its place.
constexpr auto kClientCheck = std::chrono::milliseconds(250);

}  // namespace

awaitable<Result<int>> FrontDoor::wait_for_port(const std::string& handle,
                                                beast::tcp_stream& client) {
    const auto deadline = std::chrono::steady_clock::now() + config_.load_timeout;
    asio::steady_timer timer(io());
    Waiter waiter{handle, &timer, std::nullopt};
    // However this ends, the waiter leaves the list before its frame does.
    struct Leave {
        std::vector<Waiter*>& waiters;
        Waiter* waiter;
        ~Leave() { std::erase(waiters, waiter); }
    } leave{waiters_, &waiter};
    for (;;) {
        const auto* route = find_route(routes_, handle);
        if (route == nullptr) {
            co_return Error{"model_not_found", "the config no longer defines '" + handle +
                                                   "'; this front door serves: " + known_models()};
        }
        if (waiter.refusal) co_return *waiter.refusal;
        switch (action_for(*route, demands_.contains(handle))) {
            case RouteAction::forward:
                co_return route->port;
            case RouteAction::not_loaded:
                co_return Error{"model_not_loaded",
                                "'" + handle +
                                    "' is not loaded, and is not loaded on demand: load it "
                                    "('ensemble load PORT " +
                                    handle + "') or set 'on_demand: true' for it in the config"};
            case RouteAction::demand:
                if (!connected_ || !send_demand || !send_demand(protocol::Demand{handle})) {
                    co_return Error{"supervisor_unreachable",
                                    "'" + handle +
                                        "' is not loaded, and ensembled, which loads it, is not "
                                        "reachable; retry shortly"};
                }
                spdlog::info("front door: asked ensembled to load '{}'", handle);
                demands_[handle] = true;
                break;
            case RouteAction::wait:
                break;
        }
        if (std::find(waiters_.begin(), waiters_.end(), &waiter) == waiters_.end()) {
            if (waiters_.size() >= config_.queue_max) {
                co_return Error{"queue_full", std::to_string(config_.queue_max) +
                                                  " requests are already waiting for models to "
                                                  "load; retry shortly"};
            }
            waiters_.push_back(&waiter);
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) break;
        if (client_closed(client)) {
            co_return Error{"client_closed", "the client went away while '" + handle +
                                                 "' loaded; its load goes on for others"};
        }
        timer.expires_at(std::min(deadline, now + kClientCheck));
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        // (woken by a change, the deadline or the client check: each time, look again)
    }
    co_return Error{"load_timeout", "'" + handle + "' is still not ready after " +
                                        std::to_string(config_.load_timeout.count()) +
                                        " s; retry later, or see 'ensemble status'"};
}

std::string FrontDoor::models_list() const {
    json data = json::array();
    for (const auto& route : routes_) {
        json entry = {{"id", route.handle},           {"object", "model"},
                      {"created", started_unix_},     {"owned_by", "ensemble"},
                      {"state", client_state(route)}, {"on_demand", route.on_demand}};
        if (route.port != 0) entry["port"] = route.port;
        if (!route.aliases.empty()) entry["aliases"] = route.aliases;
        data.push_back(std::move(entry));
    }
    return json{{"object", "list"}, {"data", std::move(data)}}.dump(-1, ' ', false,
                                                                    json::error_handler_t::replace);
}

std::optional<http::response<http::string_body>> FrontDoor::answer_locally(
    const http::request<http::string_body>& request) const {
    const bool keep_alive = request.keep_alive();
    const std::string_view target = sv(request.target());
    const auto path = target.substr(0, target.find('?'));
    const bool get = request.method() == http::verb::get || request.method() == http::verb::head;
    if (path == "/health" && get) {
        json body = {{"status", "ok"},
                     {"front_door", true},
                     {"models", routes_.size()},
                     {"supervisor", connected_ ? "connected" : "unreachable"}};
        return make_json_response(http::status::ok, body.dump(), keep_alive);
    }
    if (path == "/" && get) {
        http::response<http::string_body> running{http::status::ok, 11};
        running.set(http::field::content_type, "text/plain; charset=utf-8");
        running.body() = ollama::kRunningText;
        running.keep_alive(keep_alive);
        running.prepare_payload();
        return running;
    }
    if (!path.starts_with("/v1/") && !is_ollama(path)) {
        return make_error_response(
            {http::status::not_found, "invalid_request_error", "unknown_path",
             "no route for '" + std::string(target) +
                 "'; the front door serves the OpenAI API under /v1/, Ollama's under /api/, and "
                 "GET /health"},
            keep_alive);
    }
    if (auto allowed = check_api_key(sv(request[http::field::authorization]), config_.api_key);
        !allowed) {
        return error_for(target, api_error(allowed.error()), keep_alive);
    }
    if (path == "/v1/models" && get)
        return make_json_response(http::status::ok, models_list(), keep_alive);
    if (is_ollama(path)) {
        const auto call = ollama::call_of(path);
        if (auto refused = ollama::refusal(request, config_.api_key)) return refused;
        if (call == ollama::Call::version)
            return make_json_response(http::status::ok, ollama::version_body(), keep_alive);
        if (call == ollama::Call::tags || call == ollama::Call::ps) {
            std::vector<ollama::PortModel> models;
            for (const auto& route : routes_) {
                const bool loaded = client_state(route) == "loaded";
                if (call == ollama::Call::ps && !loaded) continue;
                auto model = ollama::describe(ModelIdentity{route.handle, route.aliases, "", false},
                                              route.path);
                model.context = route.context;
                model.loaded_unix = started_unix_;
                model.memory_bytes = route.memory_bytes;
                model.expires_unix = route.expires_unix;
                models.push_back(std::move(model));
            }
            return make_json_response(
                http::status::ok,
                call == ollama::Call::tags ? ollama::tags_body(models) : ollama::ps_body(models),
                keep_alive);
        }
    }
    if (request.method() != http::verb::post) {
        return error_for(
            target,
            {http::status::method_not_allowed, "invalid_request_error", "method_not_allowed",
             "the front door forwards POST requests that name a model; " + std::string(path) +
                 " is not one"},
            keep_alive);
    }
    return std::nullopt;
}

awaitable<bool> FrontDoor::handle(beast::tcp_stream& stream,
                                  http::request<http::string_body>& request) {
    const std::string target(sv(request.target()));
    const bool keep_alive = request.keep_alive() && !draining();
    auto local = answer_locally(request);
    std::optional<ApiError> refused;
    std::optional<int> port;
    if (!local) {
        const auto name = requested_model(request.body());
        const auto* route = find_route(routes_, name);
        if (name.empty()) {
            refused = ApiError{
                http::status::bad_request, "invalid_request_error", "model_required",
                "the request names no model ('model'); this front door serves: " + known_models()};
        } else if (route == nullptr) {
            refused =
                ApiError{http::status::not_found, "invalid_request_error", "model_not_found",
                         "the model '" + name +
                             "' is not in the config; this front door serves: " + known_models()};
        } else {
            const std::string handle = route->handle;  // routes_ may change while it waits
            auto waited = co_await wait_for_port(handle, stream);
            if (waited) {
                port = *waited;
            } else if (waited.error().code == "client_closed") {
                metrics_.answered(target, 499);  // nginx's code for it: nobody to answer
                co_return false;
            } else {
                refused = refusal_error(waited.error());
            }
        }
    }
    if (refused) local = error_for(target, *refused, keep_alive);
    if (local) {
        if (request.method() == http::verb::head) {
            const auto length = local->body().size();
            local->body().clear();
            local->content_length(length);
        }
        const bool kept = co_await reply(stream, *local);
        metrics_.answered(target, local->result_int());
        co_return kept;
    }
    target_for(*port);
    auto& proxy = *proxies_.at(*port);
    if (draining()) request.keep_alive(false);
    RequestTrace trace;
    const bool kept = co_await proxy.forward(stream, request, trace);
    metrics_.answered(target, trace.status == 0 ? 499 : trace.status);
    co_return kept && !draining();
}

}  // namespace ensemble
