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

// The value of one sample on a /metrics page (name and labels exactly as written), or -1.
double metric(const std::string& page, const std::string& sample);

}  // namespace ensemble::testing
