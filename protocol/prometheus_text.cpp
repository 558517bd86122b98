#include "protocol/prometheus_text.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>

namespace ensemble::protocol {

namespace {

// HELP text escapes backslash and newline; label values also the double quote.
void append_escaped(std::string& out, std::string_view text, bool quote) {
    for (const char c : text) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '"' && quote) {
            out += "\\\"";
        } else {
            out += c;
        }
    }
}

void append_value(std::string& out, double value) {
    if (std::isnan(value)) {
        out += "NaN";
    } else if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
    } else if (value == std::floor(value) && std::abs(value) < 1e15) {
        out += std::to_string(static_cast<long long>(value));
    } else {
        std::array<char, 32> digits{};
        const auto end = std::to_chars(digits.begin(), digits.end(), value).ptr;
        out.append(digits.begin(), end);
    }
}

}  // namespace

void PrometheusText::family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += "# HELP ";
    text_ += name;
    text_ += ' ';
    append_escaped(text_, help, false);
    text_ += "\n# TYPE ";
    text_ += name;
    text_ += ' ';
    text_ += type;
    text_ += '\n';
}

void PrometheusText::sample(std::string_view name, const MetricLabels& labels, double value,
                            std::string_view suffix) {
    text_ += name;
    text_ += suffix;
    if (!labels.empty()) {
        text_ += '{';
        for (std::size_t i = 0; i < labels.size(); ++i) {
            if (i > 0) text_ += ',';
            text_ += labels[i].first;
            text_ += "=\"";
            append_escaped(text_, labels[i].second, true);
            text_ += '"';
        }
        text_ += '}';
    }
    text_ += ' ';
    append_value(text_, value);
    text_ += '\n';
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
    std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double value) {
    const auto at = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
    ++counts_[static_cast<std::size_t>(at)];
    sum_ += value;
    ++count_;
}

void Histogram::write(PrometheusText& out, std::string_view name,
                      const MetricLabels& labels) const {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        cumulative += counts_[i];
        auto with_le = labels;
        std::string le;
        if (i == bounds_.size()) {
            le = "+Inf";
        } else {
            append_value(le, bounds_[i]);
        }
        with_le.emplace_back("le", std::move(le));
        out.sample(name, with_le, static_cast<double>(cumulative), "_bucket");
    }
    out.sample(name, labels, sum_, "_sum");
    out.sample(name, labels, static_cast<double>(count_), "_count");
}

}  // namespace ensemble::protocol
