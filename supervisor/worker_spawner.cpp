#include "supervisor/worker_spawner.h"

#include <unistd.h>

#include <array>
#include <fstream>
#include <random>

#include "os/executable_path.h"
#include "protocol/worker_contract.h"

namespace ensemble {

std::string random_token() {
    std::array<unsigned char, 24> bytes{};
    std::ifstream urandom("/dev/urandom", std::ios::binary);
    if (!urandom.read(reinterpret_cast<char*>(bytes.data()), bytes.size())) {
        std::random_device rd;  // fallback; still unpredictable on Linux and macOS
        for (auto& b : bytes)
            b = static_cast<unsigned char>(rd());
    }
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (auto b : bytes) {
        out += kHex[b >> 4];
        out += kHex[b & 15];
    }
    return out;
}

std::filesystem::path WorkerSpawner::default_worker_binary() {
    if (const auto self = executable_path()) {
        for (const auto& candidate :
             {self->parent_path() / "ensemble-worker",
              self->parent_path().parent_path() / "worker" / "ensemble-worker"}) {
            if (std::filesystem::exists(candidate)) return candidate;
        }
    }
    return find_program("ensemble-worker").value_or("ensemble-worker");
}

Result<WorkerLaunch> WorkerSpawner::plan(const Config& config, int port, const std::string& handle,
                                         const PortAssignment* overrides,
                                         const WorkerSlot& slot) const {
    const int files_slot = slot.files;
    const auto* model = config.find_model(handle);
    if (model == nullptr) {
        return Error{"unknown_model",
                     "unknown model '" + handle + "'; the config defines: " + config.model_names()};
    }
    const auto engine_it = config.engines.find(model->engine);
    if (engine_it == config.engines.end()) {
        return Error{"unknown_engine", "model '" + handle + "' uses engine '" + model->engine +
                                           "', which the config does not define"};
    }
    const auto& engine = engine_it->second;
    if (!model->upstream.empty() && !slot.upstream) {
        return Error{"upstream_not_ready", "'" + handle + "' runs in front of '" + model->upstream +
                                               "', which is not ready"};
    }
    const bool use_overrides = overrides != nullptr && overrides->model == handle;
    const int context =
        use_overrides ? overrides->context.value_or(model->context) : model->context;
    const int parallel =
        use_overrides ? overrides->parallel.value_or(model->parallel) : model->parallel;
    WorkerLaunch l;
    l.worker_id = "w" + std::to_string(port) + "-" + random_token().substr(0, 8);
    l.token = random_token();
    const auto files = port_files_in(config.supervisor.state_dir, port, files_slot);
    l.worker_log = files.worker_log;
    l.engine_log = files.engine_log;
    l.command.argv = {
        worker_binary_.string(),
        "--port",
        std::to_string(port),
        "--host",
        config.supervisor.bind_host,
        "--hold-while-loading",
        std::to_string(
            std::chrono::ceil<std::chrono::seconds>(config.supervisor.hold_while_loading).count()),
        "--model",
        model->path,
        "--handle",
        handle,
        "--engine",
        engine.preset.name,
        "--context",
        std::to_string(context),
        "--parallel",
        std::to_string(parallel),
        "--log-file",
        l.engine_log.string(),
        "--engine-socket",
        protocol::engine_socket(config.supervisor.run_dir, port, files_slot).string(),
        "--engine-liveness-interval",
        std::to_string(config.supervisor.health.engine_probe_interval.count() / 1000.0),
        "--engine-liveness-failures",
        std::to_string(config.supervisor.health.engine_probe_failures),
        "--drain-timeout",
        std::to_string(config.supervisor.health.drain_timeout.count() / 1000.0)};
    protocol::append_port_limit_options(l.command.argv, config.supervisor.port_limits);
    if (engine.load_stall_timeout) {
        l.command.argv.insert(
            l.command.argv.end(),
            {"--load-stall-timeout", std::to_string(engine.load_stall_timeout->count() / 1000.0)});
    }
    l.command.engine_env = engine.env;
    if (engine.preset.name == "command") {
        l.command.argv.insert(l.command.argv.end(),
                              {"--command", engine.command, "--ready-path", engine.ready_path});
    } else if (!engine.binary.empty()) {
        l.command.argv.insert(l.command.argv.end(), {"--engine-bin", engine.binary});
    }
    for (const auto& alias : model->aliases)
        l.command.argv.insert(l.command.argv.end(), {"--alias", alias});
    if (model->accept_any_model) l.command.argv.push_back("--accept-any-model");
    if (slot.upstream) {
        l.command.argv.insert(l.command.argv.end(), {"--upstream-url", slot.upstream->url,
                                                     "--upstream-handle", slot.upstream->handle});
    }
    for (const auto* args : {&engine.args, &model->args}) {
        for (const auto& a : *args)
            l.command.argv.push_back("--engine-arg=" + a);
    }
    return l;
}

namespace {

// A worker we spawned: a child process of ours.
class ChildWorker final : public WorkerProcess {
  public:
    explicit ChildWorker(std::unique_ptr<ChildProcess> child) : child_(std::move(child)) {}
    pid_t pid() const override { return child_->pid(); }
    std::optional<ExitStatus> poll_exit() override { return child_->poll_exit(); }

  private:
    std::unique_ptr<ChildProcess> child_;
};

}  // namespace

Result<SpawnedWorker> WorkerSpawner::spawn(const Config& config, int port,
                                           const std::string& handle,
                                           const PortAssignment* overrides,
                                           const ListeningSocket& listening,
                                           WorkerSlot slot) const {
    static_assert(protocol::kListenFd == kPassedDescriptor);
    auto launch = plan(config, port, handle, overrides, slot);
    if (!launch) return launch.error();
    SpawnSpec spec;
    spec.argv = launch->command.argv;
    spec.log_file = launch->worker_log;
    spec.die_with_parent = false;
    spec.extra_env = {{protocol::kSupervisorSocketVariable, link_socket_.string()},
                      {protocol::kWorkerIdVariable, launch->worker_id},
                      {protocol::kWorkerTokenVariable, launch->token}};
    for (const auto& [name, value] : launch->command.engine_env)
        spec.extra_env[std::string(protocol::kEngineEnvPrefix) + name] = value;
    spec.passed_fd = listening.fd();
    spec.extra_env[protocol::kListenFdVariable] = std::to_string(protocol::kListenFd);
    if (slot.standby) spec.extra_env[protocol::kStandbyVariable] = "1";
    spec.extra_env[protocol::kWorkerFilesVariable] = std::to_string(slot.files);
    auto child = ChildProcess::spawn(spec);
    if (!child) return child.error();
    return SpawnedWorker{std::move(launch).value(),
                         std::make_unique<ChildWorker>(std::move(child).value())};
}

protocol::PortFiles port_files_in(const std::filesystem::path& state_dir, int port, int files) {
    return protocol::port_files(protocol::log_folder(state_dir), port, files);
}

}  // namespace ensemble
