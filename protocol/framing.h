// Newline-delimited JSON framing for control.sock and workers.sock: one JSON value per line, with
// a maximum frame size. A malformed or oversized frame is reported and skipped; it never stops
// the decoder, so one bad message cannot take down either side of a connection.
#pragma once

#include <cstddef>
#include <deque>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "protocol/result.h"

namespace ensemble::protocol {

constexpr std::size_t kMaxFrameBytes = 1 << 20;

std::string encode_frame(const nlohmann::json& message);

// Unix socket paths are limited (sun_path: 108 bytes on Linux, 104 on macOS).
constexpr std::size_t kMaxSocketPath = 103;
Status check_socket_path(const std::string& path);

class FrameDecoder {
  public:
    explicit FrameDecoder(std::size_t max_frame_bytes = kMaxFrameBytes) : max_(max_frame_bytes) {}

    // Adds received bytes; complete frames become available through next().
    void feed(std::string_view bytes);
    // The next decoded frame (a JSON value or the error it caused), or nullopt if none is complete.
    std::optional<Result<nlohmann::json>> next();

  private:
    void finish_line(std::string_view line);

    std::size_t max_;
    std::string partial_;
    bool discarding_ = false;  // inside an oversized frame: drop bytes until its newline
    std::deque<Result<nlohmann::json>> ready_;
};

}  // namespace ensemble::protocol
