#include "os/private_folder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ensemble {

std::string private_folder_problem(const std::filesystem::path& dir) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
        std::error_code ec;
        std::filesystem::create_directories(dir.parent_path(), ec);
        if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            return "cannot create " + dir.string() + ": " + std::strerror(errno);
        if (::lstat(dir.c_str(), &st) != 0)
            return "cannot inspect " + dir.string() + ": " + std::strerror(errno);
    }
    if (!S_ISDIR(st.st_mode))
        return dir.string() + " is not a folder (a link or a file): use a folder of this user's";
    if (st.st_uid != ::geteuid()) {
        return dir.string() + " belongs to uid " + std::to_string(st.st_uid) +
               ", not this user: use a folder of this user's";
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return dir.string() +
               " can be written by other users, who could plant files Ensemble acts on: run "
               "'chmod go-w " +
               dir.string() + "'";
    }
    return "";
}

std::string sealed_folder_problem(const std::filesystem::path& dir) {
    if (auto problem = private_folder_problem(dir); !problem.empty()) return problem;
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        return "cannot inspect " + dir.string() + ": " + std::strerror(errno);
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        return dir.string() +
               " can be entered by other users, who could connect to a socket in it: run "
               "'chmod 700 " +
               dir.string() + "'";
    }
    return "";
}

}  // namespace ensemble
