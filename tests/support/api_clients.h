// The official API clients (npm packages, provisioned by deploy/provision-clients) run by node
// against a port, as a user's tools would: a script of tests/clients/ prints one JSON object.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ensemble::testing {

struct ClientRun {
    int exit_code = -1;
    std::string output;     // stdout and stderr
    nlohmann::json result;  // the last line of stdout, parsed (null if it is not JSON)
};

// Runs `node tests/clients/SCRIPT ARGS...` with the provisioned packages; fails the test with
// what to do when node or the packages are missing.
ClientRun run_client(const std::string& script, const std::vector<std::string>& args);

}  // namespace ensemble::testing
