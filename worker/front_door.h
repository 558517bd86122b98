// The front door (supervisor.front_door): one port for the whole fleet. A request names its
// model; the front door forwards it, as it is, to the public port of the worker serving that
// model, and relays the answer as it arrives (OpenAI's API and Ollama's alike: each model port
// speaks both). It lists every model of the config with its state (/v1/models, /api/tags) and
// what is loaded (/api/ps). A request for a model that is not loaded waits, in a bounded queue,
// while ensembled loads it on demand, or is refused with the reason. ensembled decides what
// loads; the front door only asks (a Demand) and follows the routes it is sent.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "protocol/messages.h"
#include "worker/engine_proxy.h"
#include "worker/http_listener.h"
#include "worker/ollama_api.h"
#include "worker/request_policy.h"

namespace ensemble {

struct FrontDoorConfig : ListenerConfig {
    // Where the model ports are reached (their bind host; loopback for a wildcard one).
    std::string ports_host = "127.0.0.1";
    // Requests waiting for a model to load, all models together; more are refused with 503.
    std::size_t queue_max = 64;
    // How long a request waits while its model's load shows no progress, then 503.
    std::chrono::seconds load_timeout{600};
    ProxyLimits proxy;
};

// Which route a requested name means: a handle or an alias (with Ollama's ":latest" accepted
// when `ollama_names`).
const protocol::Route* find_route(const std::vector<protocol::Route>& routes, std::string_view name,
                                  bool ollama_names);

// What the front door does with a request for `route` now.
enum class RouteAction {
    forward,     // ready on its port
    wait,        // loading, or asked to load: wait for it
    demand,      // not loaded, loadable on demand: ask ensembled, then wait
    not_loaded,  // not loaded, and not on demand: refused
};
RouteAction action_for(const protocol::Route& route, bool demand_pending);

class FrontDoor final : public HttpListener {
  public:
    FrontDoor(asio::io_context& io, FrontDoorConfig config);
    ~FrontDoor() override;

    // Accepts connections once ensembled has said where the models are: until then they wait
    // in the listening socket's backlog, so a front door restarted under its clients answers
    // them rather than refusing them. Without word from ensembled for kRoutesWait, it accepts
    // anyway (and answers 503 front_door_starting).
    void start();
    static constexpr std::chrono::seconds kRoutesWait{5};

    // Sends a message (a demand, a keep_alive) to ensembled; false when it is not reachable now.
    std::function<bool(const nlohmann::json&)> send_to_supervisor;

    // From ensembled.
    void set_routes(std::vector<protocol::Route> routes);
    void demand_answered(const protocol::DemandResult& result);
    // The link to ensembled went down (demands outstanding are refused) or came up.
    void set_connected(bool connected);

  private:
    class PortTarget;
    struct Forward;
    struct Waiter;

    awaitable<bool> handle(tcp_stream& stream, http::request<http::string_body>& request,
                           const PlainBlocks& plain) override;
    // Answered here: health, listings, refusals. nullopt: the request names a model to forward.
    std::optional<http::response<http::string_body>> answer_locally(
        const http::request<http::string_body>& request) const;
    // Waits until the route for `handle` can be forwarded to; the refusal otherwise.
    // (A client that goes away meanwhile gives up its place: "client_closed".)
    awaitable<Result<int>> wait_for_port(const std::string& handle, tcp_stream& client);
    void wake_waiters();
    std::shared_ptr<Forward> target_for(int port, const std::string& handle);
    std::string models_list() const;
    nlohmann::json model_object(const protocol::Route& route) const;
    ollama::PortModel ollama_model(const protocol::Route& route) const;
    // Ollama's /api/show of a model, from what the config says (nullopt: not a show).
    std::optional<http::response<http::string_body>> show_locally(std::string_view target,
                                                                  const protocol::Route& route,
                                                                  bool keep_alive) const;
    std::string known_models() const;
    // GET /metrics: what it answered, its waits and the models by state (Prometheus text).
    http::response<http::string_body> metrics_response(
        const http::request<http::string_body>& request) const;
    void send_keep_alive(const std::string& handle, int port, std::int64_t seconds);
    void accept_from_now();

    FrontDoorConfig config_;
    std::vector<protocol::Route> routes_;
    bool routes_known_ = false;  // ensembled has said where the models are, at least once
    bool connected_ = false;
    bool accepting_ = false;
    steady_timer routes_wait_;
    // Each model forwarded to, on its port (held by the requests using it).
    std::map<std::pair<int, std::string>, std::shared_ptr<Forward>> targets_;
    // Handles asked for and not yet answered (the requests for them wait).
    std::set<std::string> demands_;
    std::vector<Waiter*> waiters_;
    long started_unix_ = 0;
};

}  // namespace ensemble
