// Prometheus's text exposition format (version 0.0.4), written by hand: what a worker's and
// ensembled's /metrics answer. Families are written whole, one after another: HELP, TYPE, then
// their samples. Label values are escaped; names are the caller's constants.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ensemble::protocol {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

using MetricLabels = std::vector<std::pair<std::string_view, std::string>>;

class PrometheusText {
  public:
    // Starts a family: type is "counter", "gauge" or "histogram".
    void family(std::string_view name, std::string_view type, std::string_view help);
    // One sample of the current family; `suffix` for a histogram's _bucket, _sum and _count.
    void sample(std::string_view name, const MetricLabels& labels, double value,
                std::string_view suffix = {});

    const std::string& text() const { return text_; }

  private:
    std::string text_;
};

// A histogram with fixed upper bounds (seconds, bytes, ...), cumulative as Prometheus wants it.
class Histogram {
  public:
    explicit Histogram(std::vector<double> upper_bounds);
    void observe(double value);
    // The _bucket (with +Inf), _sum and _count samples; the family is the caller's.
    void write(PrometheusText& out, std::string_view name, const MetricLabels& labels = {}) const;

  private:
    std::vector<double> bounds_;
    std::vector<std::uint64_t> counts_;  // per bound, not cumulative; the last is +Inf
    double sum_ = 0;
    std::uint64_t count_ = 0;
};

}  // namespace ensemble::protocol
