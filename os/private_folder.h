// Folders only this user can write: Ensemble acts on what it finds in its state and log folders
// (state.db, engine records beside the logs), so nobody else may be able to put anything there.
#pragma once

#include <filesystem>
#include <string>

namespace ensemble {

// Creates `dir` (mode 0700) if it is missing. "" when it is a folder of this user that nobody
// else can write (not a link); otherwise what is wrong with it and what to do.
std::string private_folder_problem(const std::filesystem::path& dir);

// As private_folder_problem, and nobody else may even enter it (mode 0700): a Unix socket in it
// can be reached by this user alone, whatever the socket's own mode.
std::string sealed_folder_problem(const std::filesystem::path& dir);

}  // namespace ensemble
