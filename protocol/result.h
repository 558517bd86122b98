// Error and Result<T>: how expected runtime failures (bad input, a socket closed, an engine that
// died) travel as values. Exceptions are kept for programming errors and startup failures.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace ensemble {

struct Error {
    std::string code;     // stable, machine-readable: "bad_template", "truncated", ...
    std::string message;  // what failed, why, and what to do
};

template <typename T>
class [[nodiscard]] Result {
  public:
    Result(T value) : data_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
    Result(Error error) : data_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

    bool ok() const { return std::holds_alternative<T>(data_); }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<T>(data_); }
    const T& value() const& { return std::get<T>(data_); }
    T&& value() && { return std::get<T>(std::move(data_)); }
    const Error& error() const { return std::get<Error>(data_); }

    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

  private:
    std::variant<T, Error> data_;
};

// For operations that succeed with nothing to return.
struct Ok {};
using Status = Result<Ok>;

}  // namespace ensemble
