#include <libproc.h>
#include <sys/proc_info.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "os/process_memory.h"

namespace ensemble {

std::optional<std::uint64_t> process_footprint(pid_t pid) {
    rusage_info_v4 info{};
    if (proc_pid_rusage(pid, RUSAGE_INFO_V4, reinterpret_cast<rusage_info_t*>(&info)) != 0)
        return std::nullopt;
    return info.ri_phys_footprint;
}

std::optional<std::uint64_t> mapped_file_resident_bytes(pid_t pid,
                                                        const std::filesystem::path& file) {
    struct stat target {};
    if (::stat(file.c_str(), &target) != 0) return std::nullopt;
    bool found = false;
    std::uint64_t resident_pages = 0;
    std::uint64_t address = 0;
    // Region by region: each answer is the region at or after `address`.
    for (int regions = 0; regions < 1000000; ++regions) {
        proc_regionwithpathinfo info{};
        const int n = proc_pidinfo(pid, PROC_PIDREGIONPATHINFO, address, &info, sizeof info);
        if (n < static_cast<int>(sizeof info)) break;  // past the last region, or not ours
        const auto& vnode = info.prp_vip.vip_vi.vi_stat;
        if (vnode.vst_ino == target.st_ino &&
            vnode.vst_dev == static_cast<std::uint32_t>(target.st_dev)) {
            found = true;
            resident_pages += info.prp_prinfo.pri_pages_resident;
        }
        const auto next = info.prp_prinfo.pri_address + info.prp_prinfo.pri_size;
        if (next <= address) break;
        address = next;
    }
    if (!found) return std::nullopt;
    return resident_pages * static_cast<std::uint64_t>(::getpagesize());
}

}  // namespace ensemble
