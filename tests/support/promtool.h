// Prometheus's own checker, run on a /metrics page: the tests' proof that the page is valid
// exposition text (deploy/provision-promtool puts promtool where ENSEMBLE_PROMTOOL says).
#pragma once

#include <string>

namespace ensemble::testing {

struct PromtoolVerdict {
    bool ok = false;
    std::string output;  // promtool's findings (lint warnings included), or why it did not run
};

PromtoolVerdict promtool_check_metrics(const std::string& page);

}  // namespace ensemble::testing
