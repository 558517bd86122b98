// After every test: no process the test started may outlive it (no orphan), and none of this
// process's children may be left unreaped (no zombie). Each test gets a fresh environment mark,
// inherited by everything it spawns — supervisors, workers, engines — so its survivors can be
// found in /proc without knowing their pids. A leak kills the survivors, names them, and fails
// the run (each CTest test runs one gtest test, so the failure lands on the right test).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr const char* kMarkName = "ENSEMBLE_TEST_MARK";

struct ProcessInfo {
    pid_t pid = 0;
    pid_t parent = 0;
    char state = '?';
    std::string command;
};

std::string read_all(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::optional<ProcessInfo> info(pid_t pid) {
    const auto stat = read_all("/proc/" + std::to_string(pid) + "/stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) return std::nullopt;
    ProcessInfo p;
    p.pid = pid;
    p.command = stat.substr(stat.find('(') + 1, close - stat.find('(') - 1);
    std::istringstream rest(stat.substr(close + 2));
    rest >> p.state >> p.parent;
    return p;
}

// Live processes carrying `mark` in their environment, and zombie children of this process.
std::vector<ProcessInfo> leftovers(const std::string& mark) {
    std::vector<ProcessInfo> found;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const auto name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        const auto pid = static_cast<pid_t>(std::stol(name));
        if (pid == ::getpid()) continue;
        auto p = info(pid);
        if (!p) continue;
        if (p->state == 'Z') {
            if (p->parent == ::getpid()) found.push_back(*p);
            continue;
        }
        const auto environment = read_all(entry.path() / "environ");
        if (environment.find(std::string(kMarkName) + "=" + mark + '\0') != std::string::npos)
            found.push_back(*p);
    }
    return found;
}

class OrphanCheck : public ::testing::EmptyTestEventListener {
    void OnTestStart(const ::testing::TestInfo&) override {
        mark_ = std::to_string(::getpid()) + "." + std::to_string(++tests_);
        ::setenv(kMarkName, mark_.c_str(), 1);
    }

    void OnTestEnd(const ::testing::TestInfo& test) override {
        // Engines die with their worker a moment after it (PDEATHSIG): give them time.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        auto found = leftovers(mark_);
        while (!found.empty() && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            found = leftovers(mark_);
        }
        ::unsetenv(kMarkName);
        if (found.empty()) return;
        std::cerr << "\nORPHAN CHECK FAILED after " << test.test_suite_name() << "." << test.name()
                  << ": processes outlived the test\n";
        for (const auto& p : found) {
            std::cerr << "  pid " << p.pid << " (" << p.command << "), parent " << p.parent
                      << (p.state == 'Z' ? ", a zombie never reaped" : ", still running") << '\n';
            if (p.state != 'Z') ::kill(p.pid, SIGKILL);
        }
        std::_Exit(1);
    }

    std::string mark_;
    int tests_ = 0;
};

// Registered before main runs (gtest_main adds nothing of its own).
const bool kRegistered = [] {
    ::testing::UnitTest::GetInstance()->listeners().Append(new OrphanCheck);
    return true;
}();

}  // namespace
