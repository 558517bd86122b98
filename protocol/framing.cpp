#include "protocol/framing.h"

#include "protocol/bounded_json.h"

namespace ensemble::protocol {

std::string encode_frame(const nlohmann::json& message) {
    // dump() escapes control characters, so the encoded value never contains a raw newline.
    return message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Status check_socket_path(const std::string& path) {
    if (path.size() <= kMaxSocketPath) return Ok{};
    return Error{"socket_path_too_long",
                 "the socket path " + path + " is " + std::to_string(path.size()) +
                     " bytes; Unix sockets allow " + std::to_string(kMaxSocketPath) +
                     ": choose a shorter run_dir"};
}

void FrameDecoder::feed(std::string_view bytes) {
    while (!bytes.empty()) {
        const auto newline = bytes.find('\n');
        const auto piece = bytes.substr(0, newline);
        if (!discarding_) {
            if (partial_.size() + piece.size() > max_) {
                ready_.push_back(Error{"frame_too_large", "message over " + std::to_string(max_) +
                                                              " bytes; it was discarded"});
                partial_.clear();
                discarding_ = true;
            } else {
                partial_.append(piece);
            }
        }
        if (newline == std::string_view::npos) return;
        if (!discarding_) finish_line(partial_);
        partial_.clear();
        discarding_ = false;
        bytes.remove_prefix(newline + 1);
    }
}

void FrameDecoder::finish_line(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) return;  // blank keep-alive line
    auto value = parse_bounded_json(line);
    if (!value) {
        ready_.push_back(
            Error{"malformed_frame", "the message is refused: " + value.error().message});
    } else {
        ready_.push_back(std::move(value).value());
    }
}

std::optional<Result<nlohmann::json>> FrameDecoder::next() {
    if (ready_.empty()) return std::nullopt;
    auto front = std::move(ready_.front());
    ready_.pop_front();
    return front;
}

}  // namespace ensemble::protocol
