// ensemble: the operator's command line. Talks to ensembled over control.sock; human tables by
// default, --json for scripts. `ensemble check FILE` validates a config without a supervisor.
// (supervisor/cli.h says where each part lives.)
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <map>
#include <thread>

#include "os/cpu_features.h"
#include "supervisor/cli.h"
#include "supervisor/control_client.h"
#include "supervisor/gateway_export.h"

using namespace ensemble;
using nlohmann::json;

int main(int argc, char** argv) {
    CLI::App app{"ensemble: drive the ensembled supervisor"};
    app.require_subcommand(1);
    // --json, --config and --socket go before or after the subcommand (`ensemble status --json`);
    // subcommands made below inherit this.
    app.fallthrough();
    std::string socket_option, config_option;
    bool as_json = false;
    app.add_option("--socket", socket_option,
                   "control socket (default: from the config's run_dir)");
    app.add_option("--config,-c", config_option, "config file, to find the control socket");
    app.add_flag("--json", as_json, "print the raw JSON reply");

    protocol::ControlRequest request;
    int port = 0;
    std::string model, profile_name, check_file;
    bool follow_flag = false;
    bool no_wait = false;
    bool assume_yes = false;
    bool force = false;
    int lines = 50;
    // One subcommand per control verb, from the protocol's table.
    std::map<std::string_view, CLI::App*> groups;
    auto* profile = app.add_subcommand("profile", "list, load or unload profiles");
    profile->require_subcommand(1);
    groups["profile"] = profile;
    for (const auto& v : protocol::kVerbs) {
        auto* parent = v.group.empty() ? &app : groups.at(v.group);
        auto* sub = parent->add_subcommand(std::string(v.subcommand), std::string(v.help));
        if (v.needs_port) sub->add_option("port", port)->required()->check(CLI::Range(1, 65535));
        if (v.needs_model) sub->add_option("model", model)->required();
        if (v.needs_profile) sub->add_option("name", profile_name)->required();
        if (v.verb == protocol::Verb::load || v.verb == protocol::Verb::profile_load)
            sub->add_flag("--force", force, "use ports in supervisor.reserved_ports all the same");
        if (v.verb == protocol::Verb::profile_unload) {
            sub->add_option("name", profile_name,
                            "the profile whose ports to stop (those still serving what it put "
                            "there); without it, every port");
            sub->add_flag("--yes,-y", assume_yes, "stop every port without asking");
        }
        if (v.starts_workers) {
            sub->add_flag("--no-wait", no_wait,
                          "return once ensembled has accepted the command; follow it with "
                          "'ensemble status' or 'ensemble events -f'");
        }
        if (v.takes_lines) {
            sub->add_option("-n,--lines", lines, "how many to show")->capture_default_str();
            sub->add_flag("-f,--follow", follow_flag, "keep printing what comes");
        }
        sub->callback([&request, verb = v.verb] { request.verb = verb; });
    }
    std::string export_kind, export_host_option;
    bool export_aliases = false;
    auto* exportc = app.add_subcommand("export", "the assignments, for a gateway in front");
    exportc->require_subcommand(1);
    const std::string host_help =
        "host the gateway reaches this machine by (default: bind_host, or this machine's name "
        "when it binds every address)";
    auto* litellm = exportc->add_subcommand("litellm", "a LiteLLM model_list (YAML)");
    litellm->add_option("--host", export_host_option, host_help);
    litellm->add_flag("--with-aliases", export_aliases, "an entry for each alias as well");
    litellm->callback([&] {
        export_kind = "litellm";
        request.verb = protocol::Verb::status;
    });
    auto* handles =
        exportc->add_subcommand("handles", "handles.jsonl: handle, base_model, selector, api_base");
    handles->add_option("--host", export_host_option, host_help);
    handles->callback([&] {
        export_kind = "handles";
        request.verb = protocol::Verb::status;
    });
    EstimateRequest estimate_request;
    auto* estimatec = app.add_subcommand(
        "estimate", "the memory budget's estimate of a GGUF file or MLX directory; runs nothing");
    estimatec->add_option("path", estimate_request.path)->required();
    estimatec->add_option("--context", estimate_request.context)->capture_default_str();
    estimatec->add_option("--parallel", estimate_request.parallel)->capture_default_str();
    estimatec->add_option("--engine-arg", estimate_request.engine_args,
                          "an engine argument (repeat; e.g. --engine-arg=-ctk --engine-arg=q8_0)");
    auto* checkc = app.add_subcommand("check", "validate a config file; runs nothing");
    checkc->add_option("file", check_file)->required();
    std::string registry_file;
    checkc->add_option("--registry", registry_file,
                       "a handles.jsonl to compare with the config and, if ensembled runs, with "
                       "what it serves");
    bool apply_wired_limit = false;
    bool print_wired_mb = false;
    auto* wiredc = app.add_subcommand(
        "wired-limit", "macOS: the GPU wired limit now and in the config; --apply sets it (root)");
    wiredc->add_flag("--apply", apply_wired_limit,
                     "set iogpu.wired_limit_mb to supervisor.gpu_wired_limit now (until the next "
                     "reboot; deploy/install-wired-limit sets it at every boot)");
    wiredc->add_flag("--print-mb", print_wired_mb,
                     "print only the configured limit in MiB (nothing when none is set)");
    CLI11_PARSE(app, argc, argv);

    if (!check_file.empty()) return cli::check(check_file, registry_file);
    if (estimatec->parsed()) {
        estimate_request.cpu_has_amx = cpu_has_amx();
        return cli::estimate(estimate_request);
    }
    if (wiredc->parsed()) {
        const auto file = config_path(config_option);
        if (file.empty()) {
            std::cerr << "ensemble: wired-limit needs the config: -c FILE (or ENSEMBLE_CONFIG)\n";
            return 2;
        }
        return cli::wired_limit(file, apply_wired_limit, print_wired_mb);
    }
    if (port != 0) request.port = port;
    request.model = model;
    request.profile = profile_name;
    request.lines = lines;
    request.wait = !no_wait;
    request.force = force;
    // Stopping the whole fleet is asked about on a terminal (a script is not asked).
    if (request.verb == protocol::Verb::profile_unload && profile_name.empty() && !assume_yes &&
        ::isatty(STDIN_FILENO) == 1 && ::isatty(STDERR_FILENO) == 1) {
        std::cerr << "Stop every port ensembled serves and clear the assignments? "
                     "(name a profile to stop only its ports) [y/N] ";
        std::string answer;
        std::getline(std::cin, answer);
        if (answer != "y" && answer != "Y" && answer != "yes") {
            std::cerr << "ensemble: nothing stopped\n";
            return 1;
        }
    }
    const auto socket = control_socket_path(socket_option, config_option);
    if (!socket) {
        std::cerr << "ensemble: " << socket.error().message << '\n';
        return 3;
    }
    // A command that loads models shows their progress while it waits (on stderr).
    const bool show_progress =
        protocol::info(request.verb).starts_workers && request.wait && !as_json;
    auto reply = show_progress ? cli::call_with_progress(*socket, request)
                               : call_supervisor(*socket, request);
    if (!reply) {
        std::cerr << "ensemble: " << reply.error().message << '\n';
        return 3;
    }
    if (!export_kind.empty() && reply->value("ok", false)) {
        const auto& result = (*reply)["result"];
        const auto host = export_host(result.value("bind_host", ""), export_host_option);
        std::cout << (export_kind == "litellm" ? litellm_model_list(result, host, export_aliases)
                                               : handles_jsonl(result, host));
        return 0;
    }
    if (as_json) {
        std::cout << reply->dump(2) << '\n';
    } else if (reply->value("ok", false)) {
        cli::print_human(request.verb, (*reply)["result"]);
    }
    if (!reply->value("ok", false)) {
        if (!as_json && reply->contains("result"))
            cli::print_human(request.verb, (*reply)["result"]);
        std::cerr << "ensemble: " << (*reply)["error"].value("message", "failed") << '\n';
        return 1;
    }
    if (follow_flag && request.verb == protocol::Verb::logs)
        cli::follow((*reply)["result"].value("engine_log", ""));
    if (follow_flag && request.verb == protocol::Verb::events) {
        std::int64_t last = 0;
        for (const auto& e : (*reply)["result"]["events"])
            last = std::max<std::int64_t>(last, e.value("id", 0LL));
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            auto more = call_supervisor(*socket, request);
            if (!more || !more->value("ok", false)) return 3;
            json fresh = json::array();
            for (const auto& e : (*more)["result"]["events"]) {
                if (e.value("id", 0LL) > last) fresh.push_back(e);
            }
            for (const auto& e : fresh)
                last = std::max<std::int64_t>(last, e.value("id", 0LL));
            if (!fresh.empty()) cli::print_events(fresh);
        }
    }
    return 0;
}
