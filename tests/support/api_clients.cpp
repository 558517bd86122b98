#include "tests/support/api_clients.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "tests/support/worker_process.h"

namespace ensemble::testing {

namespace {

std::string quoted(const std::string& text) {
    std::string out = "'";
    for (const char c : text)
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

}  // namespace

ClientRun run_client(const std::string& script, const std::vector<std::string>& args) {
    ClientRun run;
    const std::filesystem::path packages =
        std::filesystem::path(ENSEMBLE_TEST_CLIENTS_DIR) / "node_modules";
    if (!std::filesystem::exists(packages)) {
        ADD_FAILURE() << "the API clients are not provisioned (" << packages
                      << " is missing): run deploy/provision-clients (deploy/setup does)";
        return run;
    }
    // An ES module finds its packages next to itself: the script runs from a folder that
    // links to them.
    const auto dir = test_output_dir(current_test_name()) / "client";
    std::filesystem::create_directories(dir);
    std::filesystem::remove(dir / "node_modules");
    std::filesystem::create_directory_symlink(packages, dir / "node_modules");
    for (const auto& file :
         std::filesystem::directory_iterator(std::filesystem::path(ENSEMBLE_TEST_CLIENT_SCRIPTS)))
        std::filesystem::copy_file(file.path(), dir / file.path().filename(),
                                   std::filesystem::copy_options::overwrite_existing);
    std::string command = "node " + quoted((dir / script).string());
    for (const auto& arg : args)
        command += " " + quoted(arg);
    command += " 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) {
        ADD_FAILURE() << "cannot run " << command;
        return run;
    }
    std::array<char, 4096> buffer{};
    std::size_t n = 0;
    while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
        run.output.append(buffer.data(), n);
    const int status = ::pclose(pipe);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    EXPECT_NE(run.exit_code, 127) << "node is missing: run deploy/install-deps";
    std::istringstream lines(run.output);
    std::string line;
    std::string last;
    while (std::getline(lines, line))
        if (!line.empty()) last = line;
    run.result = nlohmann::json::parse(last, nullptr, false);
    if (run.result.is_discarded()) run.result = nullptr;
    return run;
}

}  // namespace ensemble::testing
