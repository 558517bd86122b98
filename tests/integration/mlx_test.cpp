// The mlx-lm preset end to end, against the fake engine's mlx-lm mode (what mlx_lm.server does
// on the wire; the real one needs Apple Silicon): a worker that is ready only after a real
// answer (mlx_lm.server's /health is 200 while it loads), the model pinned (a request naming
// another model would make mlx_lm.server load it), HTTP/1.0 bodies that end when the
// connection closes, the load-stall timeout, restarts, and through the supervisor: the engine's
// own environment (HF_HOME) and its memory measured.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/files.h"
#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A Hugging Face cache holding one complete MLX repo, as huggingface_hub lays it out.
std::filesystem::path make_hf_home(const std::filesystem::path& dir, const std::string& repo) {
    const auto home = dir / "hf-home";
    auto folder = repo;
    folder.replace(folder.find('/'), 1, "--");
    const auto model = home / "hub" / ("models--" + folder);
    std::filesystem::create_directories(model / "refs");
    std::filesystem::create_directories(model / "snapshots" / "0123abcd");
    std::ofstream(model / "refs" / "main") << "0123abcd";
    for (const char* file :
         {"config.json", "model.safetensors.index.json", "tokenizer_config.json"})
        std::ofstream(model / "snapshots" / "0123abcd" / file) << "{}";
    return home;
}

int count(const std::string& text, const std::string& needle) {
    int n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
        ++n;
    return n;
}

class MlxWorkerTest : public ::testing::Test {
  protected:
    // A worker with the mlx-lm preset in front of the fake mlx_lm.server, serving a local
    // model directory (as `--model /path/to/mlx-model` would).
    std::unique_ptr<WorkerProcess> start(double load_seconds, std::vector<std::string> extra = {}) {
        dir_ = test_output_dir(current_test_name());
        std::filesystem::remove(dir_ / "engine.log");
        model_dir_ = dir_ / "Qwen3-mlx-4bit";
        std::filesystem::create_directories(model_dir_);
        std::vector<std::string> args = {"--engine",
                                         "mlx-lm",
                                         "--engine-bin",
                                         ENSEMBLE_TEST_FAKE_ENGINE_BIN,
                                         "--model",
                                         model_dir_.string(),
                                         "--handle",
                                         "qwen3-mlx",
                                         "--engine-arg=--mode",
                                         "--engine-arg=mlx-lm",
                                         "--engine-arg=--load-seconds",
                                         "--engine-arg=" + std::to_string(load_seconds)};
        args.insert(args.end(), extra.begin(), extra.end());
        return std::make_unique<WorkerProcess>(free_port(), args, current_test_name());
    }
    std::string engine_log() const { return read_file(dir_ / "engine.log"); }

    std::filesystem::path dir_, model_dir_;
};

const std::string kMlxChat =
    R"({"model":"qwen3-mlx","messages":[{"role":"user","content":"hi"}],"max_tokens":8})";
const std::string kMlxStreamedChat =
    R"({"model":"qwen3-mlx","stream":true,"messages":[{"role":"user","content":"hi"}]})";

TEST_F(MlxWorkerTest, ReadyOnlyAfterARealAnswerThoughHealthIsOkWhileLoading) {
    const auto started = std::chrono::steady_clock::now();
    auto worker = start(2.0);
    HttpRequest health;
    health.target = "/health";
    HttpResponse early;
    for (int i = 0; i < 200 && early.status == 0; ++i) {
        early = http_request(worker->port(), health);
        if (early.status == 0) std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(early.status, 503) << "the engine's /health says 200 while it loads; ours must not";
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();
    EXPECT_GE(std::chrono::steady_clock::now() - started, 2s) << "ready before the model loaded";
    auto r = http_request(worker->port(), chat_request(kMlxChat));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["choices"][0]["message"]["content"], "fake mlx answer");
}

TEST_F(MlxWorkerTest, TheModelIsPinnedSoNoRequestMakesTheEngineLoadAnother) {
    auto worker = start(0.3);
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();
    for (int i = 0; i < 3; ++i)
        ASSERT_EQ(http_request(worker->port(), chat_request(kMlxChat)).status, 200);
    // A model the worker does not serve never reaches the engine (which would load it).
    const auto other = http_request(
        worker->port(),
        chat_request(
            R"({"model":"mlx-community/Llama-3.3-70B-Instruct-4bit","messages":[{"role":"user","content":"hi"}]})"));
    EXPECT_EQ(other.status, 404);
    EXPECT_NE(other.body.find("model_not_found"), std::string::npos) << other.body;
    EXPECT_EQ(count(engine_log(), "[fake mlx_lm.server] loaded"), 1) << "loaded once, at start:\n"
                                                                     << engine_log();
}

TEST_F(MlxWorkerTest, StreamsThatEndWhenTheEngineClosesTheConnectionAreRelayedWhole) {
    auto worker = start(0.3);
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();
    auto r = http_request(worker->port(), chat_request(kMlxStreamedChat, true));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(r.complete) << r.error;
    EXPECT_EQ(count(r.body, "chat.completion.chunk"), 8) << r.body;
    EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos) << r.body;
    // The engine's HTTP/1.0 body ended with its connection; the client's gets a chunked
    // HTTP/1.1 answer and keeps its connection.
    EXPECT_EQ(r.header("transfer-encoding"), "chunked");
    EXPECT_NE(r.header("connection"), "close");
    const auto plain = http_request(worker->port(), chat_request(kMlxChat));
    EXPECT_EQ(plain.status, 200);
    EXPECT_NE(plain.header("content-length"), "") << "a body with a length keeps it";
}

TEST_F(MlxWorkerTest, AnEngineThatDiesMidStreamEndsTheStreamWithAnErrorEvent) {
    // The stream's end is the engine closing its connection: only `data: [DONE]` tells a finished
    // stream from one cut by a crash.
    auto worker = start(0.2, {"--engine-arg=--crash-after", "--engine-arg=1"});
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();  // the probe was the first request
    auto r = http_request(worker->port(), chat_request(kMlxStreamedChat, true));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body.find("data: [DONE]"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("engine_failed"), std::string::npos) << "cut, and said so: " << r.body;
    EXPECT_TRUE(r.complete) << "the client's stream still ends cleanly: " << r.error;
}

TEST_F(MlxWorkerTest, ALongGenerationIsNotMistakenForAHungEngine) {
    // mlx_lm.server answers a liveness probe only after the generation in front of it (the fake
    // serves one request at a time). Probed every second, 2 misses to kill: a long stream would be
    // cut if the probes ran while tokens were flowing (9 s here).
    // (A stall timeout of 2 s makes each probe wait at most 2 s.)
    auto worker = start(0.2, {"--engine-liveness-interval", "1", "--engine-liveness-failures", "2",
                              "--load-stall-timeout", "2", "--engine-arg=--token-delay-ms",
                              "--engine-arg=300", "--engine-arg=--tokens", "--engine-arg=30"});
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();
    const auto engine = worker->engine_pid();
    auto r = http_request(worker->port(), chat_request(kMlxStreamedChat, true));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(count(r.body, "chat.completion.chunk"), 30) << r.body;
    EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos) << r.body;
    EXPECT_EQ(worker->engine_pid(), engine) << "the engine was killed as hung:\n" << worker->log();
}

TEST_F(MlxWorkerTest, ALoadThatStallsIsKilledAndAModelThatNeverLoadsEndsTheWorker) {
    // Silent for 1000 s: no log output, no answer. Killed after 2 s of no progress, 3 times.
    auto worker = start(1000.0, {"--load-stall-timeout", "2"});
    const auto exit = worker->wait_exit(60s);
    ASSERT_TRUE(exit) << worker->log();
    EXPECT_EQ(exit->code, 5) << "the worker's 'cannot load the model' exit";
    EXPECT_EQ(count(worker->log(), "no progress for 2000 ms while loading"), 3) << worker->log();
}

TEST_F(MlxWorkerTest, AKilledEngineIsRestartedAndServesAgainOnlyOnceLoaded) {
    auto worker = start(1.0);
    ASSERT_TRUE(worker->wait_ready(30s)) << worker->log();
    const auto engine = worker->engine_pid();
    ASSERT_TRUE(engine);
    ::kill(*engine, SIGKILL);
    // Requests made now wait for the restarted engine's load, then succeed.
    auto r = http_request(worker->port(), chat_request(kMlxChat));
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_NE(worker->engine_pid(), engine);
    EXPECT_EQ(count(engine_log(), "[fake mlx_lm.server] loaded"), 2) << engine_log();
}

// Through ensembled: an engine `env:` (HF_HOME here) reaches the engine and only the engine,
// a repo id resolves in that cache, and the memory the engine holds is measured.
class MlxSupervisorTest : public SupervisorFixture {
  protected:
    void SetUp() override {
        SupervisorFixture::SetUp();
        const auto hf_home = make_hf_home(dir_, "mlx-community/Qwen3-0.6B-4bit");
        // The fixture's config has its engines and models; these come in through an include.
        std::ofstream(dir_ / "ensemble.yaml", std::ios::app) << "include: conf.d\n";
        std::filesystem::remove_all(dir_ / "conf.d");
        std::filesystem::create_directories(dir_ / "conf.d");
        std::ofstream(dir_ / "conf.d" / "mlx.yaml")
            << "engines:\n"
            << "  mlx:\n"
            << "    preset: mlx-lm\n"
            << "    binary: " << ENSEMBLE_TEST_FAKE_ENGINE_BIN << "\n"
            << "    args: [--mode, mlx-lm, --load-seconds, \"0.5\", --allocate-mb, \"96\"]\n"
            << "    load_stall_timeout: 10s\n"
            << "    env: {HF_HOME: " << hf_home.string()
            << ", PYTORCH_ENABLE_MPS_FALLBACK: \"1\"}\n"
            << "  mlx-no-cache:\n"
            << "    preset: mlx-lm\n"
            << "    binary: " << ENSEMBLE_TEST_FAKE_ENGINE_BIN << "\n"
            << "    args: [--mode, mlx-lm, --load-seconds, \"0.2\"]\n"
            << "    load_stall_timeout: 2s\n"
            << "    env: {HF_HOME: " << (dir_ / "empty-hf-home").string() << "}\n"
            << "models:\n"
            << "  mlx-qwen3: {engine: mlx, path: mlx-community/Qwen3-0.6B-4bit, memory: 1GiB}\n"
            << "  mlx-missing: {engine: mlx-no-cache, path: mlx-community/Qwen3-0.6B-4bit, "
               "memory: 1GiB}\n"
            << "profiles:\n  mlx-pair:\n    " << port_a_ << ": mlx-qwen3\n    " << port_b_
            << ": mlx-qwen3\n";
    }
};

// Apple Silicon's GPU wired limit against the MLX models a profile would hold (the limit comes
// from the config here: Linux has none of its own).
class MlxWiredLimitTest : public MlxSupervisorTest {
  protected:
    std::string extra_supervisor_settings() const override { return "  gpu_wired_limit: 1GiB\n"; }
};

TEST_F(MlxWiredLimitTest, CheckBudgetAndStatusWarnWhenMlxModelsPassTheWiredLimit) {
    const auto check = cli("check " + (dir_ / "ensemble.yaml").string());
    EXPECT_EQ(check.exit_code, 0) << "a warning, not an error: " << check.out;
    EXPECT_NE(check.out.find("warning: profile 'mlx-pair': 2.0 GiB of MLX models, more than "
                             "the GPU wired limit of 1.0 GiB (supervisor.gpu_wired_limit"),
              std::string::npos)
        << check.out;
    EXPECT_NE(check.out.find("Raise it: 'sudo sysctl iogpu.wired_limit_mb=2253', and set "
                             "supervisor.gpu_wired_limit: 2253MiB"),
              std::string::npos)
        << check.out;
    EXPECT_EQ(check.out.find("warning: profile 'pair'"), std::string::npos) << "no MLX there";

    supervisor_ = start_supervisor();
    auto load = cli("profile load mlx-pair");
    ASSERT_EQ(load.exit_code, 0) << load.out;
    const auto budget = cli("budget");
    EXPECT_NE(budget.out.find("GPU wired limit 1.0 GiB (supervisor.gpu_wired_limit (1024 MiB"),
              std::string::npos)
        << budget.out;
    EXPECT_NE(budget.out.find("warning: the running ports: "), std::string::npos) << budget.out;
    const auto warnings = status()["warnings"].dump();
    EXPECT_NE(warnings.find("more than the GPU wired limit of 1.0 GiB"), std::string::npos)
        << warnings;
}

// "\nNAME=value\n..." for each variable a process started with.
std::string environment_of(pid_t pid) {
    auto text = "\n" + read_file("/proc/" + std::to_string(pid) + "/environ");
    std::replace(text.begin(), text.end(), '\0', '\n');
    return text;
}

TEST_F(MlxSupervisorTest, EngineEnvironmentReachesTheEngineOnlyAndMemoryIsMeasured) {
    supervisor_ = start_supervisor();
    auto load = cli("load " + std::to_string(port_a_) + " mlx-qwen3");
    ASSERT_EQ(load.exit_code, 0) << load.out;
    ASSERT_EQ(chat(port_a_), 200);
    json p = port_status(port_a_);
    for (int i = 0; i < 50 && p.value("memory_bytes", 0ULL) < (96ULL << 20); ++i) {
        std::this_thread::sleep_for(100ms);
        p = port_status(port_a_);
    }
    EXPECT_GE(p.value("memory_bytes", 0ULL), 96ULL << 20) << "the engine's loaded weights";
    const auto engine_env = environment_of(p["engine_pid"].get<pid_t>());
    const auto worker_env = environment_of(p["pid"].get<pid_t>());
    EXPECT_NE(engine_env.find("\nHF_HOME=" + (dir_ / "hf-home").string() + "\n"),
              std::string::npos);
    EXPECT_NE(engine_env.find("\nPYTORCH_ENABLE_MPS_FALLBACK=1\n"), std::string::npos);
    EXPECT_EQ(worker_env.find("\nHF_HOME="), std::string::npos) << "the engine's only";
    EXPECT_EQ(engine_env.find("ENSEMBLE_ENGINE_ENV_"), std::string::npos);
    EXPECT_EQ(engine_env.find("ENSEMBLE_WORKER_TOKEN="), std::string::npos)
        << "the worker's credentials stay with the worker";
    const auto ps_line = read_file("/proc/" + std::to_string(p["pid"].get<pid_t>()) + "/cmdline");
    EXPECT_EQ(ps_line.find("hf-home"), std::string::npos) << "env values never on a command line";

    // The same repo id without it in the engine's cache: the load fails, and says why.
    auto missing = cli("load " + std::to_string(port_b_) + " mlx-missing");
    EXPECT_EQ(missing.exit_code, 1) << missing.out;
    EXPECT_NE(missing.out.find("could not load the model"), std::string::npos) << missing.out;
}

}  // namespace
