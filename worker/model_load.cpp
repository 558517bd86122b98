#include "worker/model_load.h"

#include <cstdio>
#include <regex>

#include "os/process_memory.h"

namespace ensemble {

std::vector<std::filesystem::path> model_files(const std::string& model) {
    static const std::regex kShard(R"(^(.*)-00001-of-([0-9]{5})\.gguf$)");
    std::smatch m;
    if (!std::regex_match(model, m, kShard)) return {model};
    std::vector<std::filesystem::path> shards;
    const int count = std::stoi(m[2].str());
    for (int i = 1; i <= count; ++i) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "-%05d-of-%05d.gguf", i, count);
        shards.emplace_back(m[1].str() + suffix);
    }
    return shards;
}

void measure_load(const std::vector<std::filesystem::path>& files, pid_t engine,
                  protocol::WorkerStats& s) {
    std::uint64_t total = 0;
    std::uint64_t resident = 0;
    bool mapped_any = false;
    for (const auto& file : files) {
        std::error_code ec;
        const auto size = std::filesystem::file_size(file, ec);
        if (ec || size == 0) return;  // a directory (MLX), a repo id, a shard missing
        total += size;
        if (auto mapped = mapped_file_resident_bytes(engine, file)) {
            resident += std::min<std::uint64_t>(*mapped, size);
            mapped_any = true;
        }
    }
    if (!mapped_any) return;  // not (yet) mapped: the supervisor measures memory instead
    s.load_file_bytes = total;
    s.load_mapped_bytes = resident;
}

}  // namespace ensemble
