#include "supervisor/fleet_metrics.h"

#include "protocol/prometheus_text.h"

namespace ensemble {

namespace {

using protocol::MetricLabels;
using protocol::PrometheusText;

// A family with one sample per port, labelled by port (and model, so a query needs no join).
template <typename Value>
void per_port(PrometheusText& out, const FleetStatus& status, std::string_view name,
              std::string_view type, std::string_view help, Value value) {
    out.family(name, type, help);
    for (const auto& report : status.ports) {
        const auto& p = report.port;
        out.sample(name, {{"port", std::to_string(p.port)}, {"model", p.handle}},
                   static_cast<double>(value(report)));
    }
}

}  // namespace

std::string fleet_metrics(const FleetStatus& status, const ListenerGauges& listener) {
    PrometheusText out;
    out.family("ensemble_port_info", "gauge",
               "The model each port serves, its profile and engine (always 1).");
    for (const auto& report : status.ports) {
        const auto& p = report.port;
        out.sample("ensemble_port_info",
                   {{"port", std::to_string(p.port)},
                    {"model", p.handle},
                    {"profile", p.profile},
                    {"engine", report.model ? report.model->engine : std::string()}},
                   1);
    }
    out.family("ensemble_port_state", "gauge", "Each port's state: 1 for the current one.");
    for (const auto& report : status.ports) {
        for (const auto state : kPortStates) {
            out.sample("ensemble_port_state",
                       {{"port", std::to_string(report.port.port)}, {"state", to_string(state)}},
                       state == report.port.state ? 1 : 0);
        }
    }
    per_port(out, status, "ensemble_port_memory_estimate_bytes", "gauge",
             "The memory the port's model was estimated to need when it was started (0: none).",
             [](const PortReport& r) { return r.port.estimate ? r.port.estimate->total() : 0; });
    per_port(out, status, "ensemble_port_memory_measured_bytes", "gauge",
             "Memory the port's worker and engine use (Linux: PSS; macOS: physical footprint).",
             [](const PortReport& r) { return r.port.stats.memory_bytes; });
    per_port(out, status, "ensemble_port_restarts_total", "counter",
             "Times ensembled restarted the port's worker after a failure.",
             [](const PortReport& r) { return r.port.restarts; });
    per_port(out, status, "ensemble_port_engine_restarts_total", "counter",
             "Times the port's current worker restarted its engine.",
             [](const PortReport& r) { return r.port.stats.engine_restarts; });
    per_port(out, status, "ensemble_port_requests_total", "counter",
             "Requests the port's current worker answered.",
             [](const PortReport& r) { return r.port.stats.requests; });
    per_port(out, status, "ensemble_port_generated_tokens_total", "counter",
             "Tokens the port's current worker relayed.",
             [](const PortReport& r) { return r.port.stats.tokens; });
    per_port(out, status, "ensemble_port_tokens_per_second", "gauge",
             "Tokens relayed per second over the last heartbeat interval.",
             [](const PortReport& r) { return r.port.tokens_per_s; });
    per_port(out, status, "ensemble_port_requests_queued", "gauge",
             "Requests waiting in the worker for a restarting engine.",
             [](const PortReport& r) { return r.port.stats.queue_depth; });
    per_port(out, status, "ensemble_port_load_progress", "gauge",
             "How far the port's engine has loaded its model: 0 to 0.99 while it loads, 1 once "
             "ready, 0 without a worker.",
             [](const PortReport& r) {
                 if (r.port.state == PortState::ready) return 1.0;
                 return r.port.load ? r.port.load->fraction : 0.0;
             });
    out.family("ensemble_port_load_remaining_seconds", "gauge",
               "While a port's engine loads: the time left at the rate so far (absent until "
               "the load is seen moving).");
    for (const auto& report : status.ports) {
        const auto& p = report.port;
        if (p.load && p.load->eta_s) {
            out.sample("ensemble_port_load_remaining_seconds",
                       {{"port", std::to_string(p.port)}, {"model", p.handle}}, *p.load->eta_s);
        }
    }
    per_port(out, status, "ensemble_port_uptime_seconds", "gauge",
             "How long the port has served since its worker became ready (0 when not ready).",
             [](const PortReport& r) { return r.uptime_s; });

    const auto& b = status.budget;
    out.family("ensemble_memory_budget_bytes", "gauge",
               "The memory budget (0: none configured; then the machine's budgetable memory "
               "bounds the ports).");
    out.sample("ensemble_memory_budget_bytes", {}, static_cast<double>(b.budget_bytes));
    out.family("ensemble_memory_budgetable_bytes", "gauge",
               "The memory the machine can give the models at all.");
    out.sample("ensemble_memory_budgetable_bytes", {}, static_cast<double>(b.budgetable_bytes));
    out.family("ensemble_memory_reserved_bytes", "gauge",
               "Memory the running ports' estimates reserve.");
    out.sample("ensemble_memory_reserved_bytes", {}, static_cast<double>(b.reserved_bytes));
    out.family("ensemble_memory_measured_bytes", "gauge", "Memory the ports measure in all.");
    out.sample("ensemble_memory_measured_bytes", {}, static_cast<double>(b.measured_bytes));
    out.family("ensemble_memory_over_budget", "gauge",
               "1 while the measured total is over the budget.");
    out.sample("ensemble_memory_over_budget", {}, b.over_budget ? 1 : 0);

    if (const auto& door = status.front_door) {
        // Named apart from the front door's own page (ensemble_front_door_*): this is ensembled's
        // view of the process, which is there to see when the process itself is not.
        out.family("ensemble_front_door_process_state", "gauge",
                   "The front door's state as ensembled sees it: 1 for the current one.");
        for (const auto state : kFrontDoorStates)
            out.sample("ensemble_front_door_process_state",
                       {{"state", std::string(to_string(state))}}, state == door->state ? 1 : 0);
        out.family("ensemble_front_door_process_restarts_total", "counter",
                   "Times ensembled started the front door again after it exited.");
        out.sample("ensemble_front_door_process_restarts_total", {},
                   static_cast<double>(door->restarts));
        out.family("ensemble_front_door_process_uptime_seconds", "gauge",
                   "How long the front door has been linked to this ensembled (0 when not).");
        out.sample("ensemble_front_door_process_uptime_seconds", {},
                   static_cast<double>(door->uptime_s));
    }

    out.family("ensemble_supervisor_uptime_seconds", "gauge", "How long ensembled has run.");
    out.sample("ensemble_supervisor_uptime_seconds", {}, static_cast<double>(status.uptime_s));
    out.family("ensemble_status_connections", "gauge", "Connections open to this status listener.");
    out.sample("ensemble_status_connections", {}, static_cast<double>(listener.connections));
    out.family("ensemble_status_event_streams", "gauge",
               "Clients following /api/events as a stream (the status page among them).");
    out.sample("ensemble_status_event_streams", {}, static_cast<double>(listener.streams));
    return out.text();
}

}  // namespace ensemble
