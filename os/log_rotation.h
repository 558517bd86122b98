// Size-based rotation for log files other processes hold open for appending (engines, workers):
// copy then truncate, as logrotate's copytruncate does, since the writer cannot be told to
// reopen. Lines written between the copy and the truncation are lost; with O_APPEND writers the
// file never grows a hole.
#pragma once

#include <cstdint>
#include <filesystem>

#include "protocol/result.h"

namespace ensemble {

// Rotates `path` when it is larger than `max_bytes`: path.1 is the newest old file, path.<keep>
// the oldest kept. Returns whether it rotated; a missing file is not an error.
Result<bool> rotate_if_larger(const std::filesystem::path& path, std::uint64_t max_bytes, int keep);

}  // namespace ensemble
