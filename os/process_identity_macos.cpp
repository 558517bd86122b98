// macOS: a process's start time is p_start, read with proc_pidinfo(PROC_PIDTBSDINFO), which
// answers only for processes of the same user (or root): EPERM otherwise.
#include <libproc.h>
#include <sys/proc.h>
#include <sys/proc_info.h>
#include <sys/sysctl.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "os/process_identity.h"

namespace ensemble {

Result<ProcessIdentity> identify_process(pid_t pid) {
    proc_bsdinfo info{};
    const int size = proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, &info, sizeof info);
    if (size != static_cast<int>(sizeof info)) {
        const int error = errno;
        if (error == ESRCH) return Error{"gone", "no process has pid " + std::to_string(pid)};
        return Error{"unreadable", "cannot read the start time of pid " + std::to_string(pid) +
                                       " (proc_pidinfo: " + std::strerror(error) + ")"};
    }
    if (info.pbi_status == SZOMB)
        return Error{"gone", "pid " + std::to_string(pid) + " has exited (a zombie)"};
    const auto start = static_cast<std::int64_t>(info.pbi_start_tvsec) * 1000000 +
                       static_cast<std::int64_t>(info.pbi_start_tvusec);
    return ProcessIdentity{pid, start};
}

bool process_group_has_members(pid_t group) {
    std::vector<pid_t> pids(4096);
    const int bytes = proc_listpids(PROC_PGRP_ONLY, static_cast<std::uint32_t>(group), pids.data(),
                                    static_cast<int>(pids.size() * sizeof(pid_t)));
    if (bytes <= 0) return false;
    pids.resize(static_cast<std::size_t>(bytes) / sizeof(pid_t));
    for (const pid_t pid : pids) {
        if (pid > 0 && identify_process(pid)) return true;  // zombies read as gone
    }
    return false;
}

std::string boot_id() {
    char id[64] = {};
    std::size_t size = sizeof id - 1;
    if (sysctlbyname("kern.bootsessionuuid", id, &size, nullptr, 0) != 0) return {};
    return std::string(id);
}

}  // namespace ensemble
