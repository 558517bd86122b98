#include "tests/support/promtool.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace ensemble::testing {

PromtoolVerdict promtool_check_metrics(const std::string& page) {
    const std::filesystem::path promtool = ENSEMBLE_TEST_PROMTOOL;
    if (!std::filesystem::exists(promtool))
        return {false,
                promtool.string() + " is missing: run deploy/setup (deploy/provision-promtool)"};
    const auto input = std::filesystem::temp_directory_path() /
                       ("ensemble-metrics-" + std::to_string(::getpid()) + ".txt");
    std::ofstream(input, std::ios::binary) << page;
    // `check metrics` reads the page on its standard input; 2>&1 keeps its findings.
    const std::string command =
        "'" + promtool.string() + "' check metrics < '" + input.string() + "' 2>&1";
    PromtoolVerdict verdict;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return {false, "could not run " + command};
    std::array<char, 4096> buffer{};
    for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
        verdict.output.append(buffer.data(), n);
    const int status = ::pclose(pipe);
    std::filesystem::remove(input);
    verdict.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    return verdict;
}

double metric(const std::string& page, const std::string& sample) {
    const auto at = page.find("\n" + sample + " ");
    if (at == std::string::npos) return -1;
    return std::stod(page.substr(at + sample.size() + 2));
}

}  // namespace ensemble::testing
