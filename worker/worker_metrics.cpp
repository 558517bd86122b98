#include "worker/worker_metrics.h"

#include <array>

namespace ensemble {

namespace {

using protocol::MetricLabels;

// Seconds: from a tiny model's sub-millisecond answers to a large model's minutes-long ones.
const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                            2.5,   5,    10,    30,   60,  120,  300, 600};

constexpr std::array<std::string_view, 13> kRoutes = {"/v1/chat/completions",
                                                      "/v1/completions",
                                                      "/v1/embeddings",
                                                      "/v1/responses",
                                                      "/v1/models",
                                                      "/health",
                                                      "/metrics",
                                                      "/v1/other",
                                                      "/api/chat",
                                                      "/api/generate",
                                                      "/api/embed",
                                                      "/api/other",
                                                      "other"};

constexpr std::array<std::string_view, 5> kEngineStates = {"loading", "ready", "restarting",
                                                           "stopping", "stopped"};

double seconds(WorkerMetrics::Duration d) {
    return std::chrono::duration<double>(d).count();
}

}  // namespace

std::string_view metrics_route(std::string_view target) {
    const auto path = target.substr(0, target.find('?'));
    for (const auto route : kRoutes) {
        if (path == route) return route;
    }
    if (path.starts_with("/api/")) return "/api/other";  // Ollama's listings and refusals
    return path.starts_with("/v1/") ? "/v1/other" : "other";
}

WorkerMetrics::WorkerMetrics() : first_token_(kLatencyBounds), duration_(kLatencyBounds) {}

void WorkerMetrics::answered(std::string_view target, unsigned status) {
    // A status outside HTTP's range (an engine's mistake) is counted as 0, not as a new label.
    ++answered_[{metrics_route(target), status >= 100 && status <= 599 ? status : 0}];
}

void WorkerMetrics::proxied(Duration duration, std::optional<Duration> first_token,
                            std::uint64_t prompt_tokens) {
    duration_.observe(seconds(duration));
    if (first_token) first_token_.observe(seconds(*first_token));
    prompt_tokens_ += prompt_tokens;
}

void WorkerMetrics::write_requests(protocol::PrometheusText& out, std::string_view prefix,
                                   std::size_t in_flight) const {
    const auto name = [&](std::string_view family) {
        return std::string(prefix).append("_").append(family);
    };
    const auto requests = name("requests_total");
    out.family(requests, "counter", "Requests answered, by route and HTTP status.");
    for (const auto& [key, count] : answered_) {
        out.sample(requests,
                   {{"route", std::string(key.first)}, {"code", std::to_string(key.second)}},
                   static_cast<double>(count));
    }
    const auto active = name("requests_in_flight");
    out.family(active, "gauge", "Requests read and not yet answered in full.");
    out.sample(active, {}, static_cast<double>(in_flight));

    const auto first_token = name("time_to_first_token_seconds");
    out.family(first_token, "histogram",
               "Streamed requests: from the request read to its first token relayed.");
    first_token_.write(out, first_token);
    const auto duration = name("request_duration_seconds");
    out.family(duration, "histogram",
               "Requests for a model (relayed, or answered 503/504 after waiting for it): "
               "from the request read to the answer's end.");
    duration_.write(out, duration);

    const auto prompt_tokens = name("prompt_tokens_total");
    out.family(prompt_tokens, "counter",
               "Prompt tokens of the answers that reported them (usage.prompt_tokens).");
    out.sample(prompt_tokens, {}, static_cast<double>(prompt_tokens_));
}

std::string WorkerMetrics::render(const WorkerGauges& g) const {
    protocol::PrometheusText out;
    out.family("ensemble_worker_info", "gauge", "The model this worker serves (always 1).");
    out.sample("ensemble_worker_info", {{"model", g.model}}, 1);

    write_requests(out, "ensemble_worker", g.in_flight);
    out.family("ensemble_worker_requests_queued", "gauge",
               "Requests waiting for a restarting engine.");
    out.sample("ensemble_worker_requests_queued", {}, static_cast<double>(g.queued));
    out.family("ensemble_worker_generated_tokens_total", "counter",
               "Tokens generated in the answers relayed.");
    out.sample("ensemble_worker_generated_tokens_total", {},
               static_cast<double>(g.generated_tokens));

    out.family("ensemble_worker_engine_state", "gauge",
               "The engine's state: 1 for the current one.");
    for (const auto state : kEngineStates) {
        out.sample("ensemble_worker_engine_state", {{"state", std::string(state)}},
                   state == g.engine_state ? 1 : 0);
    }
    out.family("ensemble_worker_draining", "gauge", "1 while the worker drains to stop.");
    out.sample("ensemble_worker_draining", {}, g.draining ? 1 : 0);
    out.family("ensemble_worker_engine_restarts_total", "counter",
               "Times the worker restarted its engine.");
    out.sample("ensemble_worker_engine_restarts_total", {}, g.engine_restarts);

    out.family("ensemble_worker_memory_bytes", "gauge",
               "Memory in use (Linux: proportional set size; macOS: physical footprint).");
    if (g.worker_memory_bytes > 0) {
        out.sample("ensemble_worker_memory_bytes", {{"process", "worker"}},
                   static_cast<double>(g.worker_memory_bytes));
    }
    if (g.engine_memory_bytes > 0) {
        out.sample("ensemble_worker_memory_bytes", {{"process", "engine"}},
                   static_cast<double>(g.engine_memory_bytes));
    }
    return out.text();
}

}  // namespace ensemble
