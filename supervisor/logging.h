// Where ensembled's own log goes. Under systemd (stderr is the journal stream) each line carries
// its syslog priority as "<N>" and no timestamp, since journald adds its own; with --log-file,
// to a size-rotated file with timestamps; otherwise to stderr with timestamps.
#pragma once

#include <filesystem>

#include "profiles/config.h"

namespace ensemble {

// True when stderr is the journal stream systemd gave this process ($JOURNAL_STREAM).
bool stderr_is_journal();

// Sets the default spdlog logger; `log_file` empty means stderr. Throws spdlog::spdlog_ex when
// the file cannot be opened (a startup failure).
void configure_logging(const std::string& program, const std::filesystem::path& log_file,
                       const LogSettings& rotation);

}  // namespace ensemble
