#include "os/private_folder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ensemble {

namespace {

Error not_private(std::string message) {
    return Error{"not_private", std::move(message)};
}

}  // namespace

Status check_private_folder(const std::filesystem::path& dir) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) {
        std::error_code ec;
        std::filesystem::create_directories(dir.parent_path(), ec);
        if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            return not_private("cannot create " + dir.string() + ": " + std::strerror(errno));
        if (::lstat(dir.c_str(), &st) != 0)
            return not_private("cannot inspect " + dir.string() + ": " + std::strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return not_private(dir.string() +
                           " is not a folder (a link or a file): use a folder of this user's");
    if (st.st_uid != ::geteuid()) {
        return not_private(dir.string() + " belongs to uid " + std::to_string(st.st_uid) +
                           ", not this user: use a folder of this user's");
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return not_private(
            dir.string() +
            " can be written by other users, who could plant files Ensemble acts on: run "
            "'chmod go-w " +
            dir.string() + "'");
    }
    return Ok{};
}

Status check_sealed_folder(const std::filesystem::path& dir) {
    if (auto ok = check_private_folder(dir); !ok) return ok;
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        return not_private("cannot inspect " + dir.string() + ": " + std::strerror(errno));
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        return not_private(
            dir.string() +
            " can be entered by other users, who could connect to a socket in it: run "
            "'chmod 700 " +
            dir.string() + "'");
    }
    return Ok{};
}

}  // namespace ensemble
