// Config loading and validation: every problem is reported with its file:line:column.
#include <gtest/gtest.h>

#include <fstream>

#include "profiles/config.h"

using namespace ensemble;

namespace {

class ConfigTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = std::filesystem::temp_directory_path() / "ensemble-config" / info->name();
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        std::ofstream(dir_ / "a.gguf") << "x";
    }

    ConfigLoad load(const std::string& yaml, bool check_files = true) {
        std::ofstream(dir_ / "ensemble.yaml") << yaml;
        return load_config(dir_ / "ensemble.yaml", check_files);
    }

    // The one issue expected, at line:column.
    void expect_issue(const ConfigLoad& r, int line, int column, const std::string& fragment) {
        ASSERT_FALSE(r.config);
        bool found = false;
        std::string all;
        for (const auto& i : r.issues) {
            all += i.to_string() + "\n";
            if (i.line == line && i.column == column &&
                i.message.find(fragment) != std::string::npos)
                found = true;
        }
        EXPECT_TRUE(found) << "wanted " << line << ":" << column << " '" << fragment << "' in:\n"
                           << all;
    }

    std::filesystem::path dir_;
};

const char* kValid = R"(supervisor:
  memory_budget: 85%
  boot_profile: demo
engines:
  fast-llama:
    preset: llama.cpp
    binary: /usr/bin/llama-server
    args: [--threads, "2"]
models:
  tiny:
    path: ./a.gguf
    context: 2048
    aliases: [tiny-latest]
  big-one:
    engine: fast-llama
    path: ./a.gguf
    memory: 12GiB
profiles:
  demo:
    8100: tiny
    8101:
      model: big-one
      parallel: 2
)";

TEST_F(ConfigTest, ValidConfigLoads) {
    auto r = load(kValid);
    ASSERT_TRUE(r.config) << (r.issues.empty() ? "" : r.issues.front().to_string());
    const auto& c = *r.config;
    EXPECT_EQ(c.supervisor.memory_budget, "85%");
    EXPECT_EQ(c.models.at("tiny").context, 2048);
    EXPECT_EQ(c.models.at("tiny").engine, "llama.cpp");
    EXPECT_EQ(c.models.at("big-one").memory_bytes, 12ULL << 30);
    EXPECT_EQ(c.engines.at("fast-llama").args, (std::vector<std::string>{"--threads", "2"}));
    EXPECT_EQ(c.profiles.at("demo").ports.at(8101).parallel, 2);
    EXPECT_TRUE(std::filesystem::path(c.models.at("tiny").path).is_absolute());
}

TEST_F(ConfigTest, UnknownKeyIsReportedWithPosition) {
    expect_issue(load("models:\n  tiny:\n    path: ./a.gguf\n    contxt: 4\n"), 4, 5,
                 "unknown key 'contxt'");
}

TEST_F(ConfigTest, DuplicatePortIsReported) {
    expect_issue(
        load(
            "models:\n  tiny: {path: ./a.gguf}\nprofiles:\n  p:\n    8100: tiny\n    8100: tiny\n"),
        6, 5, "port 8100 appears twice in profile 'p'");
}

TEST_F(ConfigTest, PortOutOfRangeIsReported) {
    expect_issue(load("models:\n  tiny: {path: ./a.gguf}\nprofiles:\n  p:\n    70000: tiny\n"), 5,
                 5, "out of range 1-65535");
}

// Found by an adversarial run: `load 22 tiny` succeeded (as root it would take ssh's port).
TEST_F(ConfigTest, PrivilegedPortsNeedAnExplicitYes) {
    const std::string profile =
        "models:\n  tiny: {path: ./a.gguf}\nprofiles:\n  p:\n    80: tiny\n";
    expect_issue(load(profile), 5, 5, "port 80 is below 1024");
    auto allowed = load("supervisor:\n  allow_privileged_ports: true\n" + profile);
    ASSERT_TRUE(allowed.config) << allowed.issues.at(0).to_string();
    EXPECT_TRUE(allowed.config->supervisor.allow_privileged_ports);
    EXPECT_TRUE(check_port_allowed(allowed.config->supervisor, 22));
    EXPECT_TRUE(check_port_allowed(SupervisorSettings{}, 1024));
    EXPECT_FALSE(check_port_allowed(SupervisorSettings{}, 1023));
}

TEST_F(ConfigTest, ReservedPortsArePortsOrRangesAndTheBootProfileMayNotUseThem) {
    const std::string models = "models:\n  tiny: {path: ./a.gguf}\n";
    auto r = load("supervisor:\n  reserved_ports: [8108, \"8110-8111\"]\n" + models);
    ASSERT_TRUE(r.config) << r.issues.at(0).to_string();
    EXPECT_EQ(r.config->supervisor.reserved_ports, (std::set<int>{8108, 8110, 8111}));
    EXPECT_FALSE(check_port_not_reserved(r.config->supervisor, 8110, false));
    EXPECT_NE(
        check_port_not_reserved(r.config->supervisor, 8110, false).error().message.find("--force"),
        std::string::npos);
    EXPECT_TRUE(check_port_not_reserved(r.config->supervisor, 8110, true));
    EXPECT_TRUE(check_port_not_reserved(r.config->supervisor, 8109, false));
    for (const auto* bad : {"[8109-8108]", "[0]", "[70000]", "[\"1-5000\"]", "[abc]", "8108"})
        EXPECT_FALSE(
            load("supervisor:\n  reserved_ports: " + std::string(bad) + "\n" + models).config)
            << bad;
    auto boot = load("supervisor:\n  reserved_ports: [8108]\n  boot_profile: p\n" + models +
                     "profiles:\n  p:\n    8108: tiny\n");
    ASSERT_FALSE(boot.config);
    EXPECT_NE(boot.issues.at(0).message.find("boot_profile 'p' uses port 8108"), std::string::npos)
        << boot.issues.at(0).to_string();
    EXPECT_TRUE(load("supervisor:\n  reserved_ports: [8108]\n" + models +
                     "profiles:\n  p:\n    8108: tiny\n")
                    .config)
        << "another profile may, with --force";
}

TEST_F(ConfigTest, TheNamingPolicyReportsHandlesWithoutTheirEnginesPrefixOrWithAnothers) {
    const std::string models =
        "engines:\n  opt: {preset: command, command: \"optillm --port {port}\"}\n"
        "models:\n"
        "  mlx-qwen: {engine: mlx-lm, path: org/qwen}\n"
        "  gemma: {engine: mlx-lm, path: org/gemma}\n"
        "  opt-qwen-moa: {engine: opt, path: none}\n"
        "  mlx-llama: {engine: llama.cpp, path: ./a.gguf}\n"
        "  tiny: {engine: llama.cpp, path: ./a.gguf}\n";
    auto none = load(models);
    ASSERT_TRUE(none.config) << none.issues.at(0).to_string();
    EXPECT_TRUE(naming_violations(*none.config).empty()) << "no policy, nothing to report";
    auto r = load("supervisor:\n  naming: {mlx-lm: mlx-, opt: opt-}\n" + models);
    ASSERT_TRUE(r.config) << r.issues.at(0).to_string();
    EXPECT_EQ(naming_violations(*r.config),
              (std::vector<std::string>{
                  "model 'gemma' runs on mlx-lm, whose models' names start with 'mlx-' "
                  "(supervisor.naming)",
                  "model 'mlx-llama' starts with 'mlx-', which supervisor.naming gives to mlx-lm, "
                  "but runs on llama.cpp"}));
    // A rule keyed by an engine under `engines` stands for its preset; a model whose own rule
    // holds is not faulted for another's prefix inside its name.
    auto nested = load("supervisor:\n  naming: {opt: opt-, mlx-lm: opt-mlx-}\n" + models);
    ASSERT_TRUE(nested.config);
    for (const auto& v : naming_violations(*nested.config))
        EXPECT_EQ(v.find("'opt-qwen-moa' starts with"), std::string::npos) << v;
    expect_issue(load("supervisor:\n  naming: {mlx-lm: MLX}\n" + models), 2, 20,
                 "naming prefix 'MLX' must be kebab-case ending in '-'");
    EXPECT_FALSE(load("supervisor:\n  naming: {nosuch: x-}\n" + models).config)
        << "an engine the config does not know";
}

TEST_F(ConfigTest, AChainedModelNamesADefinedUpstreamWithoutACycleInTheSameProfile) {
    const std::string base = "models:\n  tiny: {engine: llama.cpp, path: ./a.gguf}\n";
    auto r =
        load(base + "  opt-tiny: {engine: optillm, upstream: tiny, args: [--approach, moa]}\n" +
             "profiles:\n  p:\n    8100: tiny\n    8103: opt-tiny\n");
    ASSERT_TRUE(r.config) << r.issues.at(0).to_string();
    const auto& opt = r.config->models.at("opt-tiny");
    EXPECT_EQ(opt.upstream, "tiny");
    EXPECT_EQ(opt.path, "tiny") << "{model}: what the proxy asks its upstream for";
    EXPECT_TRUE(uses_upstream(r.config->engines.at("optillm").preset));

    const auto issue = [&](const std::string& yaml) {
        auto bad = load(base + yaml);
        EXPECT_FALSE(bad.config) << yaml;
        return bad.issues.empty() ? std::string() : bad.issues.at(0).to_string();
    };
    EXPECT_NE(issue("  opt: {engine: optillm, upstream: nope}\n")
                  .find(":3:36: model 'opt' runs in front of 'nope', which is not defined"),
              std::string::npos)
        << issue("  opt: {engine: optillm, upstream: nope}\n");
    EXPECT_NE(issue("  opt: {engine: optillm, upstream: opt}\n").find("names itself"),
              std::string::npos);
    const auto cycle = issue(
        "  a: {engine: optillm, upstream: b}\n  b: {engine: optillm, upstream: c}\n"
        "  c: {engine: optillm, upstream: a}\n");
    EXPECT_NE(cycle.find("upstreams form a cycle: 'a' -> 'b' -> 'c' -> 'a'"), std::string::npos)
        << cycle;
    const auto no_upstream = issue("  opt: {engine: optillm, path: x}\n");
    EXPECT_NE(no_upstream.find("uses {upstream_url} or {upstream_handle}: name the model it runs "
                               "in front of with 'upstream:'"),
              std::string::npos)
        << no_upstream;
    const auto apart = issue(
        "  opt: {engine: optillm, upstream: tiny}\nprofiles:\n  p:\n"
        "    8103: opt\n");
    EXPECT_NE(apart.find(":6:5: profile 'p' serves 'opt', which runs in front of 'tiny', but no "
                         "port of the profile serves 'tiny'"),
              std::string::npos)
        << apart;
    // A command engine may use the upstream's placeholders too.
    auto command = load(base +
                        "  opt: {engine: proxy, upstream: tiny}\n"
                        "engines:\n  proxy: {preset: command, command: \"px --to {upstream_url} "
                        "--port {port}\", ready_path: /health}\n");
    EXPECT_TRUE(command.config) << command.issues.at(0).to_string();
}

TEST_F(ConfigTest, TheStatusListenerIsLoopbackUnlessItHasAToken) {
    auto off = load(kValid);
    ASSERT_TRUE(off.config);
    EXPECT_FALSE(off.config->supervisor.http) << "off unless configured";
    for (const auto& [text, host, port] : std::vector<std::tuple<std::string, std::string, int>>{
             {"8099", "127.0.0.1", 8099},
             {"127.0.0.2:9000", "127.0.0.2", 9000},
             {"localhost:8099", "127.0.0.1", 8099},
             {"'[::1]:8099'", "::1", 8099}}) {
        auto r = load("supervisor:\n  http: " + text + "\n");
        ASSERT_TRUE(r.config) << text << ": " << r.issues.at(0).to_string();
        ASSERT_TRUE(r.config->supervisor.http);
        EXPECT_EQ(r.config->supervisor.http->host, host);
        EXPECT_EQ(r.config->supervisor.http->port, port);
    }
    expect_issue(load("supervisor:\n  http: 0.0.0.0:8099\n"), 2, 9,
                 "reachable from other machines and no http_token_file is set");
    auto tokened = load("supervisor:\n  http: 0.0.0.0:8099\n  http_token_file: status.token\n");
    ASSERT_TRUE(tokened.config) << tokened.issues.at(0).to_string();
    EXPECT_EQ(tokened.config->supervisor.http->token_file, dir_ / "status.token");
    expect_issue(load("supervisor:\n  http: studio.local:8099\n"), 2, 9, "is not an IP address");
    expect_issue(load("supervisor:\n  http: 127.0.0.1:99999\n"), 2, 9, "must be HOST:PORT");
    expect_issue(load("supervisor:\n  http: 127.0.0.1:80\n"), 2, 9, "below 1024");
    expect_issue(load("supervisor:\n  http_token_file: t\n"), 2, 20, "http is not");
    expect_issue(load("supervisor:\n  http: 0.0.0.0:8099\n  http_token_file: \"\"\n"), 3, 20,
                 "http_token_file is empty");
    expect_issue(load("supervisor:\n  http: 8100\nmodels:\n  tiny: {path: ./a.gguf}\n"
                      "profiles:\n  p:\n    8100: tiny\n"),
                 7, 5, "supervisor.http's status listener");
}

TEST_F(ConfigTest, PortLimitsAreSizesCountsAndWholeSecondsWithinTheWorkersRanges) {
    auto none = load(kValid);
    ASSERT_TRUE(none.config);
    for (const auto& value : none.config->supervisor.port_limits)
        EXPECT_FALSE(value) << "left out: the worker's default, not passed";
    auto set = load(
        "supervisor:\n  port_limits: {max_body_bytes: 64MiB, max_connections: 256, idle_timeout: "
        "5m, header_timeout: 10s, send_timeout: 2m}\n");
    ASSERT_TRUE(set.config) << set.issues.at(0).to_string();
    std::vector<std::string> argv;
    protocol::append_port_limit_options(argv, set.config->supervisor.port_limits);
    EXPECT_EQ(argv, (std::vector<std::string>{"--max-body-bytes", "67108864", "--max-connections",
                                              "256", "--idle-timeout", "300", "--header-timeout",
                                              "10", "--send-timeout", "120"}));
    auto one = load("supervisor:\n  port_limits:\n    send_timeout: 5s\n");
    ASSERT_TRUE(one.config) << one.issues.at(0).to_string();
    argv.clear();
    protocol::append_port_limit_options(argv, one.config->supervisor.port_limits);
    EXPECT_EQ(argv, (std::vector<std::string>{"--send-timeout", "5"}));

    expect_issue(load("supervisor:\n  port_limits: {max_body_bytes: 512B}\n"), 2, 33,
                 "port_limits.max_body_bytes '512B' must be a size from 1KiB to 16GiB");
    expect_issue(load("supervisor:\n  port_limits: {max_connections: 0}\n"), 2, 34,
                 "must be a number from 1 to 1048576");
    expect_issue(load("supervisor:\n  port_limits: {send_timeout: 1500ms}\n"), 2, 31,
                 "must be a duration in whole seconds from 1s to 86400s");
    expect_issue(load("supervisor:\n  port_limits: {header_timeout: 2h}\n"), 2, 33,
                 "from 1s to 3600s");
    expect_issue(load("supervisor:\n  port_limits: {body_timeout: 5m}\n"), 2, 17, "body_timeout");
}

TEST_F(ConfigTest, TheFrontDoorListensLoadsOnDemandOnItsOwnPortsAndProfilesKeepOff) {
    auto off = load(kValid);
    ASSERT_TRUE(off.config);
    EXPECT_FALSE(off.config->supervisor.front_door) << "off unless configured";
    const std::string models =
        "models:\n  tiny: {path: ./a.gguf, on_demand: true}\n"
        "  big: {path: ./a.gguf}\n";
    auto r = load(
        "supervisor:\n  front_door:\n    listen: 11434\n    ports: [\"8110-8112\"]\n"
        "    evict_idle_after: 30s\n    load_timeout: 2m\n    queue_max: 5\n" +
        models);
    ASSERT_TRUE(r.config) << r.issues.at(0).to_string();
    const auto& door = *r.config->supervisor.front_door;
    EXPECT_EQ(door.host, "127.0.0.1");
    EXPECT_EQ(door.port, 11434);
    EXPECT_EQ(door.ports, (std::set<int>{8110, 8111, 8112}));
    EXPECT_EQ(door.evict_idle_after, std::chrono::seconds(30));
    EXPECT_EQ(door.load_timeout, std::chrono::minutes(2));
    EXPECT_EQ(door.queue_max, 5U);
    EXPECT_TRUE(r.config->loads_on_demand(r.config->models.at("tiny")));
    EXPECT_FALSE(r.config->loads_on_demand(r.config->models.at("big"))) << "listed only";
    auto all = load("supervisor:\n  front_door: {listen: 11434, ports: [8110], on_demand: all}\n" +
                    models);
    ASSERT_TRUE(all.config) << all.issues.at(0).to_string();
    EXPECT_TRUE(all.config->loads_on_demand(all.config->models.at("big")));

    expect_issue(load("supervisor:\n  front_door: {ports: [8110]}\n"), 2, 15, "needs 'listen'");
    expect_issue(load("supervisor:\n  front_door: {listen: 11434, on_demand: some}\n"), 2, 42,
                 "must be 'listed'");
    expect_issue(load("supervisor:\n  front_door: {listen: 11434, ports: [11434]}\n"), 2, 38,
                 "the front door's own port");
    // On demand with nowhere to load, or with no front door at all.
    expect_issue(load("supervisor:\n  front_door: {listen: 11434}\n" + models), 2, 15,
                 "no 'ports' to load them on");
    expect_issue(load(models), 2, 3, "no supervisor.front_door");
    // A profile may not take the front door's port or its pool.
    expect_issue(load("supervisor:\n  front_door: {listen: 11434, ports: [8110]}\n" + models +
                      "profiles:\n  p:\n    8110: big\n    11434: big\n"),
                 8, 5, "front_door.ports");
    expect_issue(load("supervisor:\n  front_door: {listen: 11434, ports: [8110]}\n" + models +
                      "profiles:\n  p:\n    8110: big\n    11434: big\n"),
                 9, 5, "supervisor.front_door's");
    expect_issue(load("supervisor:\n  reserved_ports: [8110]\n"
                      "  front_door: {listen: 11434, ports: [8110]}\n"),
                 3, 15, "reserved_ports keeps free");
    EXPECT_EQ(load("supervisor:\n  reserved_ports: [8110]\n"
                   "  front_door: {listen: 11434, ports: [8110]}\n")
                  .issues.size(),
              1U)
        << "said once";
}

TEST_F(ConfigTest, MissingModelReferenceIsReported) {
    expect_issue(load("models:\n  tiny: {path: ./a.gguf}\nprofiles:\n  p:\n    8100: huge\n"), 5,
                 11, "model 'huge' is not defined");
}

TEST_F(ConfigTest, MissingEngineIsReported) {
    expect_issue(load("models:\n  tiny: {path: ./a.gguf, engine: ollama}\n"), 2, 34,
                 "engine 'ollama'");
}

TEST_F(ConfigTest, MissingModelFileIsReported) {
    expect_issue(load("models:\n  tiny:\n    path: ./nope.gguf\n"), 3, 11, "does not exist");
    EXPECT_TRUE(load("models:\n  tiny:\n    path: ./nope.gguf\n", /*check_files=*/false).config);
}

TEST_F(ConfigTest, HandleMustBeKebabCase) {
    expect_issue(load("models:\n  Tiny_Model:\n    path: ./a.gguf\n"), 2, 3, "kebab-case");
}

TEST_F(ConfigTest, EveryProblemIsReportedNotJustTheFirst) {
    auto r =
        load("models:\n  Bad_Name: {path: ./a.gguf, context: -1}\nprofiles:\n  p:\n    0: nope\n");
    ASSERT_FALSE(r.config);
    EXPECT_GE(r.issues.size(), 3U);
}

TEST_F(ConfigTest, SyntaxErrorHasAPosition) {
    auto r = load("models:\n  tiny: [unclosed\n");
    ASSERT_FALSE(r.config);
    ASSERT_EQ(r.issues.size(), 1U);
    EXPECT_GT(r.issues[0].line, 0);
    EXPECT_NE(r.issues[0].message.find("YAML syntax error"), std::string::npos);
}

TEST_F(ConfigTest, BadTemplateInACommandEngineIsReported) {
    expect_issue(load("engines:\n  mine:\n    command: 'srv --m {modle}'\n"), 3, 14,
                 "unknown placeholder {modle}");
}

TEST_F(ConfigTest, BootProfileMustExist) {
    auto r = load("supervisor:\n  boot_profile: coding\n");
    ASSERT_FALSE(r.config);
    EXPECT_NE(r.issues.at(0).message.find("boot_profile 'coding'"), std::string::npos);
}

TEST_F(ConfigTest, IncludeDirectoryAddsModelsAndProfiles) {
    std::filesystem::create_directories(dir_ / "conf.d");
    std::ofstream(dir_ / "conf.d" / "10-models.yaml") << "models:\n  extra: {path: ../a.gguf}\n";
    std::ofstream(dir_ / "conf.d" / "20-profiles.yaml") << "profiles:\n  more:\n    9000: extra\n";
    auto r = load("include: conf.d\nmodels:\n  tiny: {path: ./a.gguf}\n");
    ASSERT_TRUE(r.config) << r.issues.front().to_string();
    EXPECT_TRUE(r.config->models.count("extra"));
    EXPECT_EQ(r.config->profiles.at("more").ports.at(9000).model, "extra");
}

TEST_F(ConfigTest, ErrorsInIncludesNameTheirOwnFile) {
    std::filesystem::create_directories(dir_ / "conf.d");
    std::ofstream(dir_ / "conf.d" / "bad.yaml") << "models:\n  x: {path: ../a.gguf, bogus: 1}\n";
    auto r = load("include: conf.d\n");
    ASSERT_FALSE(r.config);
    EXPECT_NE(r.issues.at(0).file.find("bad.yaml"), std::string::npos);
    EXPECT_EQ(r.issues.at(0).line, 2);
}

TEST_F(ConfigTest, HealthRestartAndLogSettingsLoad) {
    auto r = load(
        "supervisor:\n  logs: {max_size: 10MiB, keep: 5}\n"
        "  health: {missed_heartbeats: 5, kill_grace: 2s, stop_timeout: 90s, probe_interval: 500ms,"
        " probe_timeout: 1s, probe_failures: 2}\n"
        "  restart: {first_backoff: 200ms, max_backoff: 10s, healthy_after: 2m,"
        " crash_loop_failures: 3, crash_loop_window: 1m}\n");
    ASSERT_TRUE(r.config) << r.issues.front().to_string();
    const auto& s = r.config->supervisor;
    EXPECT_EQ(s.logs.max_bytes, 10ULL << 20);
    EXPECT_EQ(s.logs.keep, 5);
    EXPECT_EQ(s.health.missed_heartbeats, 5);
    EXPECT_EQ(s.health.kill_grace, std::chrono::seconds(2));
    EXPECT_EQ(s.health.stop_timeout, std::chrono::seconds(90));
    EXPECT_EQ(s.health.probe_interval, std::chrono::milliseconds(500));
    EXPECT_EQ(s.health.probe_failures, 2);
    EXPECT_EQ(s.restart.first_backoff, std::chrono::milliseconds(200));
    EXPECT_EQ(s.restart.healthy_after, std::chrono::minutes(2));
    EXPECT_EQ(s.restart.crash_loop_failures, 3);
    EXPECT_EQ(s.restart.crash_loop_window, std::chrono::minutes(1));
}

// A worker asked to stop drains for up to drain_timeout, then stops its engine; the supervisor
// kills it only after both (and a margin), or it would cut the requests the drain finishes.
TEST_F(ConfigTest, TheStopTimeoutFollowsTheDrainTimeoutAndMayNotCutIt) {
    const auto defaults = load("supervisor: {}\n");
    ASSERT_TRUE(defaults.config);
    EXPECT_EQ(defaults.config->supervisor.health.drain_timeout, std::chrono::seconds(30));
    EXPECT_EQ(defaults.config->supervisor.health.stop_timeout, std::chrono::seconds(45));

    const auto longer = load("supervisor:\n  health: {drain_timeout: 10m}\n");
    ASSERT_TRUE(longer.config) << longer.issues.front().to_string();
    EXPECT_EQ(longer.config->supervisor.health.drain_timeout, std::chrono::minutes(10));
    EXPECT_EQ(longer.config->supervisor.health.stop_timeout,
              std::chrono::minutes(10) + std::chrono::seconds(15));

    const auto both = load("supervisor:\n  health: {drain_timeout: 1500ms, stop_timeout: 1h}\n");
    ASSERT_TRUE(both.config) << both.issues.front().to_string();
    EXPECT_EQ(both.config->supervisor.health.stop_timeout, std::chrono::hours(1));

    expect_issue(load("supervisor:\n  health:\n    drain_timeout: 2m\n    stop_timeout: 1m\n"), 4,
                 19, "stop_timeout must be at least 135s with this drain_timeout");
    expect_issue(load("supervisor:\n  health:\n    drain_timeout: 200h\n"), 3, 20,
                 "drain_timeout must be at most 168h");
    // (A stop_timeout alone may stay short, as it could before drain_timeout existed.)
    EXPECT_TRUE(load("supervisor:\n  health: {stop_timeout: 2s}\n").config);
}

TEST_F(ConfigTest, BadHealthAndRestartSettingsAreReportedWithPositions) {
    expect_issue(load("supervisor:\n  health:\n    probe_interval: soon\n"), 3, 21,
                 "must be a duration");
    expect_issue(load("supervisor:\n  health:\n    missed_heartbeats: 1\n"), 3, 24,
                 "out of range 2-60");
    expect_issue(load("supervisor:\n  restart:\n    first_backoff: 1m\n    max_backoff: 1s\n"), 3,
                 5, "max_backoff must not be shorter");
    expect_issue(load("supervisor:\n  logs:\n    max_size: 10\n"), 3, 15, "at least 4KiB");
    expect_issue(load("supervisor:\n  health:\n    probe_everything: 1\n"), 3, 5,
                 "unknown key 'probe_everything'");
}

TEST_F(ConfigTest, MemoryPoliciesLoad) {
    auto r = load(
        "supervisor:\n  memory_budget: 170GiB\n  over_budget: stop-lowest\n"
        "  evict_idle_after: 5m\n"
        "models:\n  a: {path: ./a.gguf, priority: 3, evict: idle}\n  b: {path: ./a.gguf}\n"
        "profiles:\n  p:\n    evict: idle\n    priority: -1\n    8100: a\n"
        "    8101: {model: b, priority: 9, evict: never}\n");
    ASSERT_TRUE(r.config) << r.issues.front().to_string();
    const auto& c = *r.config;
    EXPECT_TRUE(c.supervisor.memory.stop_lowest_over_budget);
    EXPECT_EQ(c.supervisor.memory.idle_after, std::chrono::minutes(5));
    EXPECT_EQ(c.models.at("a").priority, 3);
    EXPECT_EQ(c.models.at("a").evict, EvictPolicy::idle);
    EXPECT_EQ(c.models.at("b").evict, EvictPolicy::never);
    const auto& p = c.profiles.at("p");
    EXPECT_EQ(p.priority, -1);
    EXPECT_EQ(p.evict, EvictPolicy::idle);
    EXPECT_EQ(p.ports.size(), 2U);
    EXPECT_EQ(p.ports.at(8101).priority, 9);
    EXPECT_EQ(p.ports.at(8101).evict, EvictPolicy::never);
}

TEST_F(ConfigTest, BadMemoryPoliciesAreReportedWithPositions) {
    expect_issue(load("supervisor:\n  over_budget: panic\n"), 2, 16, "'warn' or 'stop-lowest'");
    expect_issue(load("supervisor:\n  memory_budget: 120%\n"), 2, 18, "share of RAM");
    expect_issue(load("models:\n  a: {path: ./a.gguf, evict: sometimes}\n"), 2, 30,
                 "'idle' or 'never'");
    expect_issue(load("models:\n  a: {path: ./a.gguf, priority: 5000}\n"), 2, 33,
                 "out of range -1000-1000");
    expect_issue(load("models:\n  a: {path: ./a.gguf, memory: lots}\n"), 2, 31, "must be a size");
}

TEST_F(ConfigTest, EngineEnvironmentAndLoadStallTimeoutLoad) {
    auto r = load(R"(engines:
  mlx:
    preset: mlx-lm
    load_stall_timeout: 10m
    env: {HF_HOME: /Volumes/models/hf, PYTORCH_ENABLE_MPS_FALLBACK: 1, hf_hub_offline: "1"}
models:
  q: {engine: mlx, path: mlx-community/Qwen3-4B-4bit}
)");
    ASSERT_TRUE(r.config) << (r.issues.empty() ? "" : r.issues[0].to_string());
    const auto& mlx = r.config->engines.at("mlx");
    EXPECT_EQ(mlx.env.at("HF_HOME"), "/Volumes/models/hf");
    EXPECT_EQ(mlx.env.at("PYTORCH_ENABLE_MPS_FALLBACK"), "1");
    EXPECT_EQ(mlx.env.at("hf_hub_offline"), "1") << "names are case-sensitive, as in any shell";
    EXPECT_EQ(mlx.load_stall_timeout, std::chrono::minutes(10));
    EXPECT_FALSE(r.config->engines.at("llama.cpp").load_stall_timeout) << "the worker's default";
}

TEST_F(ConfigTest, BadEngineEnvironmentIsReportedWithPositions) {
    auto r = load(R"(engines:
  mlx:
    preset: mlx-lm
    load_stall_timeout: 500ms
    env: {1BAD: x, ENSEMBLE_PORTABLE: "1", OK: [a, b], "A B": y}
  other:
    preset: mlx-lm
    env: [HF_HOME]
)");
    expect_issue(r, 4, 25, "load_stall_timeout must be between 1s and 24h");
    expect_issue(r, 5, 11, "'1BAD' in engine 'mlx' env: must be letters, digits and '_'");
    expect_issue(r, 5, 20, "'ENSEMBLE_PORTABLE' in engine 'mlx' env: names starting ENSEMBLE_");
    expect_issue(r, 5, 48, "the value of OK in engine 'mlx' env must be a single value");
    expect_issue(r, 5, 56, "'A B' in engine 'mlx' env: must be letters");
    expect_issue(r, 8, 10, "engine 'other' env must be a mapping");
}

// The shipped examples stay valid as the schema grows (their model files are not checked: they
// live on the machines the examples are for).
TEST(ExampleConfigs, EveryShippedConfigLoads) {
    int checked = 0;
    for (const auto& entry : std::filesystem::directory_iterator(ENSEMBLE_SOURCE_DIR "/profiles")) {
        if (entry.path().extension() != ".yaml") continue;
        const auto loaded = load_config(entry.path(), false);
        std::string issues;
        for (const auto& issue : loaded.issues)
            issues += issue.to_string() + "\n";
        EXPECT_TRUE(loaded.config) << issues;
        ++checked;
    }
    EXPECT_GE(checked, 3);
    const auto mac = load_config(ENSEMBLE_SOURCE_DIR "/profiles/mac-studio.yaml", false);
    ASSERT_TRUE(mac.config);
    EXPECT_EQ(mac.config->supervisor.gpu_wired_limit_bytes, 160ULL << 30);
    EXPECT_EQ(mac.config->engines.at("mlx").env.at("HF_HUB_OFFLINE"), "1");
    EXPECT_EQ(mac.config->models.at("opt-coder-moa").upstream, "mlx-qwen3-coder-30b");
    EXPECT_TRUE(naming_violations(*mac.config).empty()) << "its handles follow its own policy";
}

TEST(ParseDuration, UnitsAndRejects) {
    EXPECT_EQ(parse_duration("500ms"), std::chrono::milliseconds(500));
    EXPECT_EQ(parse_duration("5s"), std::chrono::seconds(5));
    EXPECT_EQ(parse_duration("5"), std::chrono::seconds(5));
    EXPECT_EQ(parse_duration("2m"), std::chrono::minutes(2));
    EXPECT_EQ(parse_duration("1h"), std::chrono::hours(1));
    EXPECT_FALSE(parse_duration("soon"));
    EXPECT_FALSE(parse_duration("-1s"));
    EXPECT_FALSE(parse_duration("99999999999s"));
}

TEST(ParseBytes, UnitsAndRejects) {
    EXPECT_EQ(parse_bytes("170GiB"), 170ULL << 30);
    EXPECT_EQ(parse_bytes("12GB"), 12000000000ULL);
    EXPECT_EQ(parse_bytes("512 MiB"), 512ULL << 20);
    EXPECT_EQ(parse_bytes("1024"), 1024U);
    EXPECT_FALSE(parse_bytes("lots"));
    EXPECT_FALSE(parse_bytes("-5GB"));
    EXPECT_EQ(parse_bytes("1.5MiB"), 3ULL << 19);
    // A number too long for a double was an uncaught std::out_of_range: `check`, or a reload,
    // ended ensembled.
    EXPECT_FALSE(parse_bytes(std::string(400, '9')));
    EXPECT_FALSE(parse_bytes("1." + std::string(400, '9') + "GiB"));
    EXPECT_FALSE(parse_bytes("9999999999999999999TiB")) << "over 10^18 bytes";
}

}  // namespace
