// The boot ensemble's deployment: deploy/install into a temporary prefix, ensembled run from the
// installed layout (boot profile, export for a gateway, a restart that restores the assignments,
// uninstall), the systemd units through systemd-analyze verify, the launchd plist as XML, and
// ensembled's side of the service-manager protocols (sd_notify, journald priorities).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <regex>

#include "tests/support/files.h"
#include "tests/support/supervisor_fixture.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

struct Command {
    int exit_code = -1;
    std::string out;  // stdout and stderr
};

Command run(const std::string& command, const std::filesystem::path& out_file) {
    const int status =
        std::system(("{ " + command + "; } > " + out_file.string() + " 2>&1").c_str());
    std::ifstream in(out_file);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            std::string(std::istreambuf_iterator<char>(in), {})};
}

bool have_program(const std::string& name) {
    return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

// An @NAME@ deploy/install should have filled in.
bool has_placeholder(const std::string& text) {
    static const std::regex kPlaceholder("@[A-Z]+@");
    return std::regex_search(text, kPlaceholder);
}

class DeployTest : public SupervisorFixture {
  protected:
    std::string extra_supervisor_settings() const override {
        const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
        if (name.find("Rotated") != std::string::npos) return "  logs: {max_size: 4KiB, keep: 2}\n";
        return "  boot_profile: pair\n";
    }

    // deploy/install with these options, into this test's own folder.
    Command install(const std::string& options) {
        return run("ENSEMBLE_BUILD_DIR=" ENSEMBLE_TEST_BUILD_DIR " " ENSEMBLE_TEST_SOURCE_DIR
                   "/deploy/install --no-service-manager " +
                       options,
                   dir_ / "install.out");
    }
    std::string system_layout() const {
        return "--prefix " + (dir_ / "prefix").string() + " --unit-dir " +
               (dir_ / "units").string();
    }

    // Waits until every port in `ports` is ready.
    bool all_ready(const std::vector<unsigned short>& ports, std::chrono::seconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            bool ready = true;
            for (auto p : ports)
                ready = ready && port_status(p).value("state", "") == "ready";
            if (ready) return true;
            std::this_thread::sleep_for(100ms);
        }
        return false;
    }
};

TEST_F(DeployTest, TheSystemdUnitsPassSystemdAnalyzeVerify) {
    if (!have_program("systemd-analyze")) GTEST_SKIP() << "systemd-analyze is not installed";
    auto system = install(system_layout());
    ASSERT_EQ(system.exit_code, 0) << system.out;
    auto verify = run("systemd-analyze verify " + (dir_ / "units/ensembled.service").string(),
                      dir_ / "verify.out");
    EXPECT_EQ(verify.exit_code, 0) << verify.out;
    EXPECT_EQ(verify.out, "") << "systemd-analyze warned";
    const auto unit = read_file(dir_ / "units/ensembled.service");
    EXPECT_NE(unit.find("ExecStart=" + (dir_ / "prefix/bin/ensembled").string()), std::string::npos)
        << unit;
    EXPECT_NE(unit.find("Type=notify"), std::string::npos);
    EXPECT_NE(unit.find("KillMode=process"), std::string::npos);
    EXPECT_FALSE(has_placeholder(unit)) << unit;

    // The user unit, with the user's own layout (HOME here is this test's folder).
    const auto home = dir_ / "home";
    const std::filesystem::path runtime_dir = run_dir_.string() + "-xdg";  // short: socket paths
    std::filesystem::create_directories(runtime_dir);
    std::filesystem::permissions(runtime_dir, std::filesystem::perms::owner_all);
    auto user = run("HOME=" + home.string() +
                        " XDG_CONFIG_HOME= ENSEMBLE_BUILD_DIR=" + ENSEMBLE_TEST_BUILD_DIR + " " +
                        ENSEMBLE_TEST_SOURCE_DIR + "/deploy/install --user --no-service-manager",
                    dir_ / "install-user.out");
    ASSERT_EQ(user.exit_code, 0) << user.out;
    const auto user_unit = home / ".config/systemd/user/ensembled.service";
    ASSERT_TRUE(std::filesystem::exists(user_unit)) << user.out;
    EXPECT_TRUE(std::filesystem::exists(home / ".local/bin/ensembled"));
    EXPECT_TRUE(std::filesystem::exists(home / ".config/ensemble/ensemble.yaml"));
    auto verify_user = run("XDG_RUNTIME_DIR=" + runtime_dir.string() +
                               " systemd-analyze --user verify " + user_unit.string(),
                           dir_ / "verify-user.out");
    // The user manager also loads the machine's other user units; only ours must be clean.
    EXPECT_EQ(verify_user.exit_code, 0) << verify_user.out;
    EXPECT_EQ(verify_user.out.find("ensembled"), std::string::npos) << verify_user.out;
    std::filesystem::remove_all(runtime_dir);
}

// A launchd plist rendered as deploy/install does, checked as XML; `value_of(key)` reads the
// element after a key (its text, then its element name).
class RenderedPlist {
  public:
    RenderedPlist(const std::filesystem::path& dir, const std::string& name)
        : dir_(dir), plist_(dir / name) {
        rendered_ =
            run("sed -e 's|@BINDIR@|/usr/local/bin|g; s|@CONFIG@|/etc/ensemble/ensemble.yaml|g;"
                " s|@LOGDIR@|/var/log/ensemble|g' " ENSEMBLE_TEST_SOURCE_DIR "/deploy/launchd/" +
                    name + " > " + plist_.string() + " && xmllint --noout " + plist_.string(),
                dir_ / "xmllint.out");
    }
    const Command& rendered() const { return rendered_; }
    std::string text() const { return read_file(plist_); }
    std::string value_of(const std::string& key) {
        return run("xmllint --xpath \"string(/plist/dict/key[.='" + key +
                       "']/following-sibling::*[1])\" " + plist_.string() +
                       " ; xmllint --xpath \"name(/plist/dict/key[.='" + key +
                       "']/following-sibling::*[1])\" " + plist_.string(),
                   dir_ / "xpath.out")
            .out;
    }

  private:
    std::filesystem::path dir_, plist_;
    Command rendered_;
};

TEST_F(DeployTest, TheLaunchdPlistIsValidXmlWithTheKeysLaunchdNeeds) {
    if (!have_program("xmllint")) GTEST_SKIP() << "xmllint is not installed";
    RenderedPlist plist(dir_, "org.ensemble.ensembled.plist");
    EXPECT_EQ(plist.rendered().exit_code, 0) << plist.rendered().out;
    auto value_of = [&](const std::string& key) { return plist.value_of(key); };
    EXPECT_NE(value_of("Label").find("org.ensemble.ensembled"), std::string::npos);
    EXPECT_NE(value_of("ProgramArguments").find("/usr/local/bin/ensembled"), std::string::npos);
    EXPECT_NE(value_of("RunAtLoad").find("true"), std::string::npos);
    EXPECT_NE(value_of("KeepAlive").find("dict"), std::string::npos);
    EXPECT_NE(value_of("AbandonProcessGroup").find("true"), std::string::npos);
    EXPECT_NE(value_of("StandardErrorPath").find("/var/log/ensemble/"), std::string::npos);
    EXPECT_FALSE(has_placeholder(plist.text()));
}

TEST_F(DeployTest, TheWiredLimitDaemonSetsTheConfigsLimitAtBootWithAppleSysctlAlone) {
    if (!have_program("xmllint")) GTEST_SKIP() << "xmllint is not installed";
    std::ofstream(dir_ / "wired.yaml") << "supervisor:\n  gpu_wired_limit: 160GiB\n";
    const auto units = dir_ / "wired-units";
    auto installed = run(std::string(ENSEMBLE_TEST_SOURCE_DIR) +
                             "/deploy/install-wired-limit --no-service-manager --config " +
                             (dir_ / "wired.yaml").string() + " --unit-dir " + units.string() +
                             " --ensemble " + cli_bin_,
                         dir_ / "install-wired.out");
    ASSERT_EQ(installed.exit_code, 0) << installed.out;
    const auto plist = units / "org.ensemble.wired-limit.plist";
    auto valid = run("xmllint --noout " + plist.string(), dir_ / "xmllint.out");
    EXPECT_EQ(valid.exit_code, 0) << valid.out;
    auto program = run("xmllint --xpath \"string(/plist/dict/key[.='ProgramArguments']"
                       "/following-sibling::*[1])\" " +
                           plist.string(),
                       dir_ / "xpath.out")
                       .out;
    std::erase_if(program, [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
    EXPECT_EQ(program, "/usr/sbin/sysctliogpu.wired_limit_mb=163840")
        << "root runs Apple's sysctl with the value written in, nothing of ours";
    EXPECT_FALSE(has_placeholder(read_file(plist)));
    // A config without a limit installs nothing, and says so.
    std::ofstream(dir_ / "none.yaml") << "supervisor:\n  bind_host: 127.0.0.1\n";
    auto none = run(std::string(ENSEMBLE_TEST_SOURCE_DIR) +
                        "/deploy/install-wired-limit --no-service-manager --config " +
                        (dir_ / "none.yaml").string() + " --unit-dir " + units.string() +
                        " --ensemble " + cli_bin_,
                    dir_ / "install-none.out");
    EXPECT_NE(none.exit_code, 0);
    EXPECT_NE(none.out.find("sets no supervisor.gpu_wired_limit"), std::string::npos) << none.out;
    // What `ensemble wired-limit` says here: Linux has no such limit, and --apply fails so.
    const auto wired_limit =
        cli_bin_ + " --config " + (dir_ / "wired.yaml").string() + " wired-limit";
    auto shown = run(wired_limit, dir_ / "wired-limit.out");
    EXPECT_EQ(shown.exit_code, 0) << shown.out;
    EXPECT_NE(shown.out.find("supervisor.gpu_wired_limit = 160.0 GiB (163840 MiB)"),
              std::string::npos)
        << shown.out;
#ifndef __APPLE__
    auto applied = run(wired_limit + " --apply", dir_ / "wired-limit.out");
    EXPECT_EQ(applied.exit_code, 1) << applied.out;
    EXPECT_NE(applied.out.find("there is no GPU wired limit on Linux"), std::string::npos)
        << applied.out;
#endif
    auto uninstalled = run(std::string(ENSEMBLE_TEST_SOURCE_DIR) +
                               "/deploy/install-wired-limit --no-service-manager --uninstall "
                               "--unit-dir " +
                               units.string(),
                           dir_ / "uninstall-wired.out");
    EXPECT_EQ(uninstalled.exit_code, 0) << uninstalled.out;
    EXPECT_FALSE(std::filesystem::exists(plist));
}

TEST_F(DeployTest, InstalledLayoutBootsTheProfileExportsItAndARestartRestoresIt) {
    auto installed = install(system_layout());
    ASSERT_EQ(installed.exit_code, 0) << installed.out;
    const auto bin = dir_ / "prefix/bin";
    ensembled_bin_ = (bin / "ensembled").string();
    cli_bin_ = (bin / "ensemble").string();
    worker_bin_.clear();  // the installed ensembled finds the installed worker beside it
    supervisor_ = start_supervisor();
    ASSERT_TRUE(all_ready({port_a_, port_b_}, 60s)) << status().dump(2);  // the boot profile
    EXPECT_EQ(chat(port_a_), 200);
    EXPECT_EQ(chat(port_b_), 200);

    // An operator change after boot: the restart must keep it, not reapply the boot profile.
    auto swap = cli("swap " + std::to_string(port_b_) + " tiny");
    ASSERT_EQ(swap.exit_code, 0) << swap.out;

    auto litellm = cli("export litellm");
    ASSERT_EQ(litellm.exit_code, 0) << litellm.out;
    for (auto port : {port_a_, port_b_}) {
        EXPECT_NE(
            litellm.out.find("api_base: \"http://127.0.0.1:" + std::to_string(port) + "/v1\""),
            std::string::npos)
            << litellm.out;
    }
    EXPECT_NE(litellm.out.find("model: \"openai/tiny\""), std::string::npos) << litellm.out;
    auto handles = cli("export handles --host gpu-box.lan");
    ASSERT_EQ(handles.exit_code, 0) << handles.out;
    std::istringstream lines(handles.out);
    std::string line;
    int count = 0;
    while (std::getline(lines, line)) {
        const auto entry = json::parse(line, nullptr, false);
        ASSERT_FALSE(entry.is_discarded()) << line;
        EXPECT_EQ(entry["handle"], "tiny");
        EXPECT_EQ(entry["api_base"],
                  "http://gpu-box.lan:" + std::to_string(entry["port"].get<int>()) + "/v1");
        EXPECT_EQ(entry["selector"], "openai/tiny");
        ++count;
    }
    EXPECT_EQ(count, 2) << handles.out;

    ::kill(supervisor_->pid(), SIGTERM);
    ASSERT_TRUE(wait_exit(*supervisor_, 60s));
    EXPECT_NE(chat(port_a_), 200) << "a clean stop stops the workers";
    supervisor_ = start_supervisor();
    ASSERT_TRUE(all_ready({port_a_, port_b_}, 60s)) << status().dump(2);
    EXPECT_EQ(port_status(port_a_)["model"], "tiny");
    EXPECT_EQ(port_status(port_b_)["model"], "tiny") << "the swap was kept across the restart";
    EXPECT_EQ(chat(port_b_), 200);
    ::kill(supervisor_->pid(), SIGTERM);
    ASSERT_TRUE(wait_exit(*supervisor_, 60s));
    supervisor_.reset();

    auto removed = install("--uninstall " + system_layout());
    ASSERT_EQ(removed.exit_code, 0) << removed.out;
    EXPECT_FALSE(std::filesystem::exists(bin / "ensembled"));
    EXPECT_FALSE(std::filesystem::exists(dir_ / "units/ensembled.service"));
    EXPECT_TRUE(std::filesystem::exists(dir_ / "prefix/etc/ensemble/ensemble.yaml"))
        << "uninstall keeps the operator's config";
}

TEST_F(DeployTest, EngineAndWorkerLogsAreRotatedWhileTheyRun) {
    supervisor_ = start_supervisor();
    ASSERT_EQ(cli("load " + std::to_string(port_a_) + " tiny").exit_code, 0);
    // Requests make llama-server log; rotation is checked every 10 s.
    const auto logs = dir_ / "state/logs";
    const auto engine_log = logs / ("engine-" + std::to_string(port_a_) + ".log");
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline &&
           !std::filesystem::exists(engine_log.string() + ".1")) {
        EXPECT_EQ(chat(port_a_), 200);
        std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(std::filesystem::exists(engine_log.string() + ".1"));
    EXPECT_GT(std::filesystem::file_size(engine_log.string() + ".1"), 4096U);
    EXPECT_LE(std::filesystem::file_size(engine_log), 4096U + 64 * 1024) << "truncated, then grew";
    EXPECT_EQ(chat(port_a_), 200) << "the engine keeps serving and logging after the rotation";
    EXPECT_FALSE(std::filesystem::exists(engine_log.string() + ".3")) << "keep: 2";
}

// A datagram socket standing in for systemd's $NOTIFY_SOCKET.
class NotifySocket {
  public:
    explicit NotifySocket(const std::filesystem::path& path) : path_(path) {
        std::filesystem::remove(path);
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM, 0);  // SOCK_CLOEXEC is Linux's: set it apart
        ::fcntl(fd_, F_SETFD, FD_CLOEXEC);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
        timeval tv{0, 200000};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    ~NotifySocket() {
        ::close(fd_);
        std::filesystem::remove(path_);
    }
    // Collects messages until one contains `needle` or the timeout passes.
    bool wait_for(const std::string& needle, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            char buf[4096];
            const auto n = ::recv(fd_, buf, sizeof buf, 0);
            if (n > 0) received_ += std::string(buf, static_cast<std::size_t>(n)) + "\n";
            if (received_.find(needle) != std::string::npos) return true;
        }
        return false;
    }
    const std::string& received() const { return received_; }

  private:
    std::filesystem::path path_;
    int fd_ = -1;
    std::string received_;
};

TEST_F(DeployTest, EnsembledTellsSystemdWhenReadyPingsTheWatchdogAndSaysWhenStopping) {
#ifndef ENSEMBLE_TEST_HAVE_LIBSYSTEMD
    GTEST_SKIP() << "built without libsystemd: no sd_notify";
#endif
    NotifySocket notify(run_dir_.string() + "-notify");
    supervisor_ = start_supervisor(
        {{"NOTIFY_SOCKET", run_dir_.string() + "-notify"}, {"WATCHDOG_USEC", "400000"}});
    ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << notify.received();
    EXPECT_NE(notify.received().find("STATUS="), std::string::npos) << notify.received();
    EXPECT_TRUE(notify.wait_for("WATCHDOG=1", 2s)) << notify.received();
    ::kill(supervisor_->pid(), SIGTERM);
    EXPECT_TRUE(notify.wait_for("STOPPING=1", 10s)) << notify.received();
    EXPECT_TRUE(wait_exit(*supervisor_, 60s));
    supervisor_.reset();
}

TEST_F(DeployTest, UnderJournaldLogLinesCarryThePriorityAndNoTimestamp) {
    // JOURNAL_STREAM names the device and inode of the stream stderr is connected to.
    const auto log = dir_ / "ensembled.log";
    std::filesystem::remove(log);
    std::ofstream(log).close();
    struct stat st {};
    ASSERT_EQ(::stat(log.c_str(), &st), 0);
    supervisor_ = start_supervisor(
        {{"JOURNAL_STREAM", std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)}});
    ::kill(supervisor_->pid(), SIGTERM);
    ASSERT_TRUE(wait_exit(*supervisor_, 60s));
    supervisor_.reset();
    std::istringstream lines(read_file(log));
    std::string line;
    int count = 0;
    while (std::getline(lines, line)) {
        ++count;
        EXPECT_TRUE(line.rfind("<6>", 0) == 0 || line.rfind("<4>", 0) == 0 ||
                    line.rfind("<3>", 0) == 0)
            << line;
        EXPECT_EQ(line.find("T" + std::string(2, ':')), std::string::npos);
        EXPECT_FALSE(std::isdigit(static_cast<unsigned char>(line[3]))) << "a timestamp: " << line;
    }
    EXPECT_GT(count, 1);
}

}  // namespace
