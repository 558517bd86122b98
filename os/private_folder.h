// Folders only this user can write: Ensemble acts on what it finds in its state and log folders
// (state.db, engine records beside the logs), so nobody else may be able to put anything there.
#pragma once

#include <filesystem>
#include <string>

#include "protocol/result.h"

namespace ensemble {

// Creates `dir` (mode 0700) if it is missing. Ok when it is a folder of this user that nobody
// else can write (not a link); otherwise an error ("not_private") saying what is wrong with it
// and what to do.
Status check_private_folder(const std::filesystem::path& dir);

// As check_private_folder, and nobody else may even enter it (mode 0700): a Unix socket in it
// can be reached by this user alone, whatever the socket's own mode.
Status check_sealed_folder(const std::filesystem::path& dir);

}  // namespace ensemble
