#include "worker/front_door.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>

#include "os/process_memory.h"
#include "protocol/bounded_json.h"
#include "protocol/json_scan.h"
#include "protocol/prometheus_text.h"
#include "worker/cors.h"
#include "worker/immediate_io.h"
#include "worker/ollama_api.h"

namespace ensemble {

namespace {

using nlohmann::json;

// What a page may send through the front door: what it answers, what it forwards, the preflight.
constexpr std::string_view kPreflightMethods = "GET, POST, OPTIONS";

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

// What the front door reads of a request body: the few top-level members it acts on, found by
// the bounded scan; the body itself is forwarded as it is.
struct Routing {
    bool object = false;  // the body is a JSON object (else the port would refuse it too)
    std::string model;    // `model`, or Ollama's older `name`; "" if none
    json keep_alive;      // Ollama's, as given (null: not given)
    // An Ollama chat or generate with nothing to generate: a load, or with keep_alive 0 an
    // unload (ollama::loads_only).
    bool loads_only = false;
};

Routing routing_of(std::string_view body, const PlainBlocks& plain, ollama::Call call) {
    enum Key : std::size_t { model, name, keep_alive, messages, prompt, images };
    static constexpr std::array<std::string_view, 6> kKeys{"model",    "name",   "keep_alive",
                                                           "messages", "prompt", "images"};
    // Enough for any empty value (null, "", []), spaced out as a pretty-printer would; a longer
    // one is not empty, whatever it is.
    static constexpr std::size_t kShortValue = 256;
    Routing out;
    const auto scan = scan_top_level_members(body, kKeys, kMaxJsonDepth, &plain);
    if (!scan || !scan->is_object) return out;
    out.object = true;
    std::string names[2];
    json members = json::object();            // the short ones, for ollama::loads_only
    for (const auto& value : scan->values) {  // the last of duplicates wins, as for parsers
        const auto text = body.substr(value.begin, value.end - value.begin);
        if (value.key >= Key::messages && text.size() > kShortValue) {
            members[kKeys[value.key]] = true;  // stands for "something"
            continue;
        }
        auto parsed = parse_bounded_json(text);
        if (!parsed) continue;
        if (value.key <= Key::name) {
            names[value.key] = parsed->is_string() ? parsed->get<std::string>() : "";
        } else if (value.key == Key::keep_alive) {
            out.keep_alive = std::move(*parsed);
        } else {
            members[kKeys[value.key]] = std::move(*parsed);
        }
    }
    out.model = names[Key::model].empty() ? names[Key::name] : names[Key::model];
    out.loads_only = ollama::loads_only(call, members);
    return out;
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
                           refusal.code == "supervisor_unreachable" ||
                           refusal.code == "pool_full" || refusal.code == "front_door_starting";
    return {http::status::service_unavailable, "server_error", refusal.code, refusal.message,
            transient ? 5 : 0};
}

}  // namespace

const protocol::Route* find_route(const std::vector<protocol::Route>& routes, std::string_view name,
                                  bool ollama_names) {
    if (name.empty()) return nullptr;
    // Ollama's clients add ":latest"; OpenAI's model port would refuse the name with it.
    const auto base = ollama_names ? ollama::without_latest(std::string(name)) : std::string(name);
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

// One model on one port, as the proxy's target: ready while its route says that port serves it.
// Once the port serves another model (evicted, unloaded, swapped), it is gone for good: a
// request retried after a refused connection is never sent to a model it did not name.
class FrontDoor::PortTarget final : public ProxyTarget {
  public:
    PortTarget(const std::string& host, int port, std::string handle)
        : endpoint_(
              StreamEndpoint::tcp(asio::ip::make_address(host), static_cast<unsigned short>(port))),
          port_(port),
          handle_(std::move(handle)) {}

    void update(const std::vector<protocol::Route>& routes) {
        const auto* route = find_route(routes, handle_, false);
        const bool serves = route != nullptr && route->port == port_;
        const bool ready = serves && route->state == "ready";
        if (!serves) gone_ = true;
        // Stopped, or gone: pooled connections are not reused.
        if (ready_ && !ready) ++generation_;
        ready_ = ready && !gone_;
    }
    bool gone() const { return gone_; }

    bool ready() const override { return ready_; }
    awaitable<bool> wait_ready(Clock::time_point deadline) override {
        // The proxy's retry after a refused connection, while the port's worker is replaced
        // (its socket stays open): it waits for this model on this port, or gives up.
        steady_timer pause(co_await asio::this_coro::executor);
        while (!ready_ && !gone_ && Clock::now() < deadline) {
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
                "port " + std::to_string(port_) +
                    (gone_ ? " no longer serves '" + handle_ + "'"
                           : " ('" + handle_ + "') is not answering") +
                    "; retry shortly",
                2};
    }

  private:
    StreamEndpoint endpoint_;
    int port_;
    std::string handle_;
    bool ready_ = false;
    bool gone_ = false;
    std::uint64_t generation_ = 0;
};

// A model on a port, and the relay to it.
struct FrontDoor::Forward {
    Forward(const std::string& host, int port, const std::string& handle, ProxyLimits limits)
        : target(host, port, handle), proxy(target, limits) {}
    void update(const std::vector<protocol::Route>& routes) { target.update(routes); }
    bool gone() const { return target.gone(); }

    PortTarget target;
    EngineProxy proxy;
    bool kept_alive = false;  // a keep_alive other than the default was sent for it
};

struct FrontDoor::Waiter {
    std::string handle;
    steady_timer* timer;
    std::optional<Error> refusal;  // the demand for it was refused
};

FrontDoor::FrontDoor(asio::io_context& io, FrontDoorConfig config)
    : HttpListener(io, config),
      config_(std::move(config)),
      routes_wait_(io),
      started_unix_(static_cast<long>(std::time(nullptr))) {}

FrontDoor::~FrontDoor() = default;

void FrontDoor::start() {
    if (routes_known_) return accept_from_now();
    routes_wait_.expires_after(kRoutesWait);
    routes_wait_.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        spdlog::warn("front door: no routes from ensembled after {} s; accepting anyway",
                     kRoutesWait.count());
        accept_from_now();
    });
}

void FrontDoor::accept_from_now() {
    if (accepting_) return;
    accepting_ = true;
    routes_wait_.cancel();
    start_accepting();
}

void FrontDoor::set_routes(std::vector<protocol::Route> routes) {
    // Waiters look again only when where a model is, or its state, changed (not its memory).
    const auto placement = [](const std::vector<protocol::Route>& list) {
        std::vector<std::tuple<std::string, int, std::string>> out;
        for (const auto& r : list)
            out.emplace_back(r.handle, r.port, r.state);
        return out;
    };
    const bool moved = !routes_known_ || placement(routes) != placement(routes_);
    routes_ = std::move(routes);
    routes_known_ = true;
    accept_from_now();
    for (auto& [key, target] : targets_)
        target->update(routes_);
    // A target for a model its port no longer serves is dropped once no request uses it.
    std::erase_if(targets_, [](const auto& entry) {
        return entry.second->gone() && entry.second.use_count() == 1;
    });
    if (moved) wake_waiters();
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
    for (const auto& handle : demands_) {
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

std::shared_ptr<FrontDoor::Forward> FrontDoor::target_for(int port, const std::string& handle) {
    auto& target = targets_[{port, handle}];
    if (!target) {
        target = std::make_shared<Forward>(config_.ports_host, port, handle, config_.proxy);
        target->update(routes_);
    }
    return target;
}

void FrontDoor::send_keep_alive(const std::string& handle, int port, std::int64_t seconds) {
    if (!send_to_supervisor) return;
    const protocol::KeepAlive stay{handle, port, seconds};
    send_to_supervisor(protocol::to_json(stay));
}

std::string FrontDoor::known_models() const {
    std::string names;
    for (const auto& route : routes_)
        names += (names.empty() ? "" : ", ") + route.handle + " (" + client_state(route) + ")";
    return names.empty() ? "none" : names;
}

namespace {

// A waiting request looks at its client this often: one that left gives up its place.
constexpr auto kClientCheck = std::chrono::milliseconds(250);

}  // namespace

namespace {

// Whether the loads a waiting request depends on moved since it last looked: its own model's
// (a port given, a state it had not reached yet, a percent more loaded than ever), or, before
// it has a port (its load waits its turn), those of the loads ahead of it. Going round again —
// a restart, a backoff, a measure that wavers — is not progress.
class LoadWatch {
  public:
    bool moved(const std::vector<protocol::Route>& routes, const protocol::Route& own) {
        bool moved = false;
        const auto look = [&](const protocol::Route& route) {
            auto& seen = seen_[route.handle];
            if (route.state != "backoff" &&
                seen.places.insert(std::to_string(route.port) + ":" + route.state).second)
                moved = true;
            // The best so far of this measure: the file's mapping, once it appears, starts its
            // own scale (memory in use may have read 99 % of a small estimate before it).
            const auto [best, first] = seen.best_permille.try_emplace(route.load_measure, 0);
            if (route.load_permille >= best->second + kStep || (first && route.load_permille > 0)) {
                best->second = route.load_permille;
                moved = true;
            }
        };
        if (own.port != 0) {
            look(own);
        } else {
            for (const auto& route : routes) {
                if (route.port != 0 && client_state(route) == "loading") look(route);
            }
        }
        return moved;
    }

  private:
    static constexpr int kStep = 10;  // thousandths
    struct Seen {
        std::set<std::string> places;              // port and state
        std::map<std::string, int> best_permille;  // by load measure
    };
    std::map<std::string, Seen> seen_;
};

// How far `route` has come, for a refusal: "at 41 % on port 8110", or where it waits.
std::string load_position(const protocol::Route& route) {
    if (route.port == 0) return "waiting its turn behind other fleet commands";
    return route.state + " on port " + std::to_string(route.port) +
           (route.load_permille > 0 ? " at " + std::to_string(route.load_permille / 10) + " %"
                                    : std::string());
}

}  // namespace

awaitable<Result<int>> FrontDoor::wait_for_port(const std::string& handle, tcp_stream& client) {
    // A load that moves is waited for however long it takes; one that shows no progress for
    // load_timeout is given up on (as Ollama's OLLAMA_LOAD_TIMEOUT).
    auto deadline = std::chrono::steady_clock::now() + config_.load_timeout;
    LoadWatch watch;
    steady_timer timer(io());
    Waiter waiter{handle, &timer, std::nullopt};
    // However this ends, the waiter leaves the list before its frame does.
    struct Leave {
        std::vector<Waiter*>& waiters;
        Waiter* waiter;
        ~Leave() { std::erase(waiters, waiter); }
    } leave{waiters_, &waiter};
    for (;;) {
        const auto* route = find_route(routes_, handle, false);
        if (route == nullptr) {
            co_return Error{"model_not_found", "the config no longer defines '" + handle +
                                                   "'; this front door serves: " + known_models()};
        }
        if (waiter.refusal) co_return *waiter.refusal;
        const auto action = action_for(*route, demands_.contains(handle));
        if (action == RouteAction::forward) co_return route->port;
        // Without ensembled, nobody loads it, and no route changes: not worth waiting for.
        if (!connected_) {
            co_return Error{"supervisor_unreachable",
                            "'" + handle +
                                "' is not ready, and ensembled, which loads models and says "
                                "when they are ready, is not reachable; retry shortly"};
        }
        if (route->state == "failed") {
            co_return Error{"load_failed", "'" + handle + "' failed on port " +
                                               std::to_string(route->port) +
                                               "; see 'ensemble status' and 'ensemble logs " +
                                               std::to_string(route->port) + "'"};
        }
        const bool queued = std::find(waiters_.begin(), waiters_.end(), &waiter) != waiters_.end();
        // Refused before it asks for a load: a full queue asks for none.
        if (!queued && action != RouteAction::not_loaded && waiters_.size() >= config_.queue_max) {
            co_return Error{"queue_full", std::to_string(config_.queue_max) +
                                              " requests are already waiting for models to "
                                              "load; retry shortly"};
        }
        switch (action) {
            case RouteAction::forward:
                break;
            case RouteAction::not_loaded:
                co_return Error{"model_not_loaded",
                                "'" + handle +
                                    "' is not loaded, and is not loaded on demand: load it "
                                    "('ensemble load PORT " +
                                    handle + "') or set 'on_demand: true' for it in the config"};
            case RouteAction::demand:
                if (const protocol::Demand demand{handle};
                    !send_to_supervisor || !send_to_supervisor(protocol::to_json(demand))) {
                    co_return Error{"supervisor_unreachable",
                                    "'" + handle +
                                        "' is not loaded, and ensembled, which loads it, is not "
                                        "reachable; retry shortly"};
                }
                spdlog::info("front door: asked ensembled to load '{}'", handle);
                demands_.insert(handle);
                break;
            case RouteAction::wait:
                break;
        }
        if (!queued) waiters_.push_back(&waiter);
        const auto now = std::chrono::steady_clock::now();
        if (watch.moved(routes_, *route)) deadline = now + config_.load_timeout;
        if (now >= deadline) {
            co_return Error{"load_timeout", "'" + handle + "' made no load progress for " +
                                                std::to_string(config_.load_timeout.count()) +
                                                " s (front_door.load_timeout; it is " +
                                                load_position(*route) +
                                                "); retry later, or see 'ensemble status'"};
        }
        if (peer_closed(client.socket())) {
            co_return Error{"client_closed", "the client went away while '" + handle +
                                                 "' loaded; its load goes on for others"};
        }
        timer.expires_at(std::min(deadline, now + kClientCheck));
        boost::system::error_code ec;
        co_await timer.async_wait(on_error(ec));
        // (woken by a change, the deadline or the client check: each time, look again)
    }
}

json FrontDoor::model_object(const protocol::Route& route) const {
    json entry = {{"id", route.handle},           {"object", "model"},
                  {"created", started_unix_},     {"owned_by", "ensemble"},
                  {"state", client_state(route)}, {"on_demand", route.on_demand}};
    if (route.port != 0) entry["port"] = route.port;
    if (route.load_permille > 0) entry["load_progress"] = route.load_permille / 1000.0;
    if (!route.aliases.empty()) entry["aliases"] = route.aliases;
    return entry;
}

std::string FrontDoor::models_list() const {
    json data = json::array();
    for (const auto& route : routes_)
        data.push_back(model_object(route));
    return json{{"object", "list"}, {"data", std::move(data)}}.dump(-1, ' ', false,
                                                                    json::error_handler_t::replace);
}

ollama::PortModel FrontDoor::ollama_model(const protocol::Route& route) const {
    auto model =
        ollama::describe(ModelIdentity{route.handle, route.aliases, "", false}, route.path);
    model.context = route.context;
    model.tools = route.tools;
    model.loaded_unix = started_unix_;
    model.memory_bytes = route.memory_bytes;
    model.expires_unix = route.expires_unix;
    return model;
}

std::optional<http::response<http::string_body>> FrontDoor::show_locally(
    std::string_view target, const protocol::Route& route, bool keep_alive) const {
    // Clients ask for every model they list: answered from the config, never by loading it.
    if (ollama::call_of(target.substr(0, target.find('?'))) != ollama::Call::show)
        return std::nullopt;
    return make_json_response(http::status::ok, ollama::show_body(ollama_model(route)), keep_alive);
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
    if (path == "/metrics") return metrics_response(request);
    if (!path.starts_with("/v1/") && !is_ollama(path)) {
        return make_error_response(
            {http::status::not_found, "invalid_request_error", "unknown_path",
             "no route for '" + std::string(target) +
                 "'; the front door serves the OpenAI API under /v1/, Ollama's under /api/, and "
                 "GET /health"},
            keep_alive);
    }
    // A browser asking whether it may send a request (with no key: it never sends one). No one
    // engine is there to ask, so the front door answers, with llama-server's default policy.
    if (path.starts_with("/v1/") && cors::is_preflight(request))
        return cors::preflight_answer(request, kPreflightMethods, keep_alive);
    if (auto allowed = check_api_key(sv(request[http::field::authorization]), config_.api_key);
        !allowed) {
        return error_for(target, api_error(allowed.error()), keep_alive);
    }
    if (!routes_known_) {
        return error_for(target,
                         {http::status::service_unavailable, "server_error", "front_door_starting",
                          "the front door has not heard from ensembled where the models are in " +
                              std::to_string(kRoutesWait.count()) + " s since it started (" +
                              (connected_ ? "linked to it" : "ensembled is not reachable") +
                              "); retry in a moment",
                          1},
                         keep_alive);
    }
    if (path == "/v1/models" && get)
        return make_json_response(http::status::ok, models_list(), keep_alive);
    if (path.starts_with("/v1/models/") && get) {  // OpenAI's models.retrieve()
        const auto id = path.substr(std::string_view("/v1/models/").size());
        if (const auto* route = find_route(routes_, id, false))
            return make_json_response(http::status::ok, model_object(*route).dump(), keep_alive);
        return make_error_response(
            {http::status::not_found, "invalid_request_error", "model_not_found",
             "the model '" + std::string(id) +
                 "' is not in the config; this front door serves: " + known_models()},
            keep_alive);
    }
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
                models.push_back(ollama_model(route));
            }
            return make_json_response(
                http::status::ok,
                call == ollama::Call::tags ? ollama::tags_body(models) : ollama::ps_body(models),
                keep_alive);
        }
    }
    if (request.method() != http::verb::post) {
        auto response = error_for(
            target,
            {http::status::method_not_allowed, "invalid_request_error", "method_not_allowed",
             std::string(request.method_string()) + " " + std::string(path) +
                 ": the front door answers GET /v1/models and forwards POST requests that name "
                 "a model"},
            keep_alive);
        response.set(http::field::allow, "POST");
        return response;
    }
    return std::nullopt;
}

http::response<http::string_body> FrontDoor::metrics_response(
    const http::request<http::string_body>& request) const {
    const bool keep_alive = request.keep_alive();
    if (!config_.metrics_without_key) {
        if (auto allowed = check_api_key(sv(request[http::field::authorization]), config_.api_key);
            !allowed) {
            return make_error_response(api_error(allowed.error()), keep_alive);
        }
    }
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
        auto refused =
            make_error_response({http::status::method_not_allowed, "invalid_request_error",
                                 "method_not_allowed", "/metrics answers GET and HEAD only"},
                                keep_alive);
        refused.set(http::field::allow, "GET, HEAD");
        return refused;
    }
    protocol::PrometheusText out;
    metrics_.write_requests(out, "ensemble_front_door", in_flight());
    out.family("ensemble_front_door_models", "gauge",
               "Models of the config, by the state /v1/models gives them.");
    std::map<std::string, int> states{
        {"loaded", 0}, {"loading", 0}, {"not loaded", 0}, {"failed", 0}};
    for (const auto& route : routes_)
        ++states[client_state(route)];
    for (const auto& [state, count] : states)
        out.sample("ensemble_front_door_models", {{"state", state}}, count);
    out.family("ensemble_front_door_waiting_for_load", "gauge",
               "Requests waiting for their model to load (at most queue_max).");
    out.sample("ensemble_front_door_waiting_for_load", {}, static_cast<double>(waiters_.size()));
    out.family("ensemble_front_door_loads_asked", "gauge",
               "Models asked of ensembled to load on demand, not yet answered.");
    out.sample("ensemble_front_door_loads_asked", {}, static_cast<double>(demands_.size()));
    out.family("ensemble_front_door_supervisor_connected", "gauge",
               "1 while the front door is linked to ensembled.");
    out.sample("ensemble_front_door_supervisor_connected", {}, connected_ ? 1 : 0);
    out.family("ensemble_front_door_draining", "gauge", "1 while the front door drains to stop.");
    out.sample("ensemble_front_door_draining", {}, draining() ? 1 : 0);
    if (const auto memory = process_footprint(::getpid()); memory && *memory > 0) {
        out.family("ensemble_front_door_memory_bytes", "gauge",
                   "Memory in use (Linux: proportional set size; macOS: physical footprint).");
        out.sample("ensemble_front_door_memory_bytes", {}, static_cast<double>(*memory));
    }
    http::response<http::string_body> response{http::status::ok, 11};
    response.set(http::field::content_type, protocol::kPrometheusContentType);
    response.body() = out.text();
    response.keep_alive(keep_alive);
    response.prepare_payload();
    return response;
}

awaitable<bool> FrontDoor::handle(tcp_stream& stream, http::request<http::string_body>& request,
                                  const PlainBlocks& plain) {
    RequestTrace trace;  // the request has just been read: its wait for a load is timed too
    const std::string target(sv(request.target()));
    const bool keep_alive = request.keep_alive() && !draining();
    auto local = answer_locally(request);
    std::optional<ApiError> refused;
    std::optional<int> port;
    std::string handle;
    const auto call = ollama::call_of(target.substr(0, target.find('?')));
    Routing routing;
    std::optional<std::int64_t> stay_s;  // Ollama's keep_alive, passed on to ensembled
    if (!local) {
        routing = routing_of(request.body(), plain, call);
        const auto& name = routing.model;
        const auto* route = find_route(routes_, name, is_ollama(target));
        const bool generates =
            is_ollama(target) && (call == ollama::Call::chat || call == ollama::Call::generate ||
                                  call == ollama::Call::embed || call == ollama::Call::embeddings);
        // (Ollama's keep_alive: how long the model stays; not the connection's)
        auto stay = generates ? ollama::keep_alive_seconds(routing.keep_alive)
                              : Result<std::optional<std::int64_t>>(std::nullopt);
        if (!routing.object) {
            refused = ApiError{
                http::status::bad_request, "invalid_request_error", "invalid_json",
                "the request body is not a JSON object (or is nested too deep); "
                "send one that names its model, such as {\"model\": \"" +
                    (routes_.empty() ? std::string("NAME") : routes_.front().handle) + "\", ...}"};
        } else if (name.empty()) {
            refused = ApiError{
                http::status::bad_request, "invalid_request_error", "model_required",
                "the request names no model ('model'); this front door serves: " + known_models()};
        } else if (route == nullptr) {
            refused =
                ApiError{http::status::not_found, "invalid_request_error", "model_not_found",
                         "the model '" + name +
                             "' is not in the config; this front door serves: " + known_models()};
        } else if (auto shown = show_locally(target, *route, keep_alive)) {
            local = std::move(shown);
        } else if (!stay) {
            refused = ApiError{http::status::bad_request, "invalid_request_error", "bad_request",
                               stay.error().message};
        } else if (routing.loads_only && *stay == 0) {
            // Ollama's "unload this model" (`ollama stop`): answered at once, loading nothing;
            // a model on a port (loaded, or loading) is unloaded once idle.
            if (route->port != 0) send_keep_alive(route->handle, route->port, 0);
            local = make_json_response(http::status::ok, ollama::load_reply(call, name, true),
                                       keep_alive);
        } else {
            stay_s = *stay;
            handle = route->handle;  // routes_ may change while it waits
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
        cors::allow_origin(request, *local);  // the engines' answers carry their own
        const bool kept = co_await reply(stream, *local, request.method());
        metrics_.answered(target, local->result_int());
        co_return kept;
    }
    const auto forward = target_for(*port, handle);  // held until the answer is relayed
    if (draining()) request.keep_alive(false);
    const bool kept = co_await forward->proxy.forward(stream, request, trace);
    metrics_.answered(target, trace.status == 0 ? 499 : trace.status);
    if (trace.status != 0) {
        metrics_.proxied(RequestTrace::Clock::now() - trace.began, trace.first_token,
                         trace.prompt_tokens);
    }
    // Counted from the end of the request, as Ollama does: sent once it is answered, and only
    // for a request that was (one the model refused changes nothing). A request without one
    // puts back the default a request before it changed.
    if (trace.status >= 200 && trace.status < 300) {
        if (stay_s) {
            send_keep_alive(handle, *port, *stay_s);
            forward->kept_alive = true;
        } else if (std::exchange(forward->kept_alive, false)) {
            send_keep_alive(handle, *port, protocol::KeepAlive::kDefault);
        }
    }
    // What the answer told the client: one told "keep-alive" may already be sending its next
    // request, which a drain still answers (HttpListener::drain).
    co_return kept;
}

}  // namespace ensemble
