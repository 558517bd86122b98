// Prometheus text exposition as written by protocol/prometheus_text.h: escaping, numbers, and a
// histogram's cumulative buckets. (promtool checks whole pages in the worker's tests.)
#include "protocol/prometheus_text.h"

#include <gtest/gtest.h>

#include <limits>

namespace ensemble::protocol {
namespace {

TEST(PrometheusText, EscapesLabelValuesAndHelpAndWritesNumbersPlainly) {
    PrometheusText out;
    out.family("x_total", "counter", "a \\ b\nc");
    out.sample("x_total", {{"model", "a\"b\\c\nd"}}, 3);
    out.sample("x_total", {}, 0.25);
    out.sample("x_total", {}, std::numeric_limits<double>::infinity());
    out.sample("x_total", {}, 1e20);
    EXPECT_EQ(out.text(),
              "# HELP x_total a \\\\ b\\nc\n"
              "# TYPE x_total counter\n"
              "x_total{model=\"a\\\"b\\\\c\\nd\"} 3\n"
              "x_total 0.25\n"
              "x_total +Inf\n"
              "x_total 1e+20\n");
}

TEST(PrometheusText, AHistogramsBucketsAreCumulativeWithInfSumAndCount) {
    Histogram h({0.1, 1, 0.5});  // sorted on construction
    for (const double v : {0.05, 0.1, 0.3, 2.0})
        h.observe(v);
    PrometheusText out;
    h.write(out, "t_seconds", {{"route", "r"}});
    EXPECT_EQ(out.text(),
              "t_seconds_bucket{route=\"r\",le=\"0.1\"} 2\n"
              "t_seconds_bucket{route=\"r\",le=\"0.5\"} 3\n"
              "t_seconds_bucket{route=\"r\",le=\"1\"} 3\n"
              "t_seconds_bucket{route=\"r\",le=\"+Inf\"} 4\n"
              "t_seconds_sum{route=\"r\"} 2.45\n"
              "t_seconds_count{route=\"r\"} 4\n");
}

}  // namespace
}  // namespace ensemble::protocol
