// What a worker sees of its engine's load: a split GGUF's shards, and the share of them this
// process (standing in for the engine) has mapped and read.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fcntl.h>

#include <fstream>

#include "worker/model_load.h"

using namespace ensemble;

namespace {

TEST(ModelLoad, ASplitGgufIsEveryShardAndAnythingElseItself) {
    EXPECT_EQ(model_files("/m/qwen-00001-of-00003.gguf"),
              (std::vector<std::filesystem::path>{"/m/qwen-00001-of-00003.gguf",
                                                  "/m/qwen-00002-of-00003.gguf",
                                                  "/m/qwen-00003-of-00003.gguf"}));
    EXPECT_EQ(model_files("/m/qwen.gguf"), (std::vector<std::filesystem::path>{"/m/qwen.gguf"}));
    EXPECT_EQ(model_files("/m/qwen-00002-of-00003.gguf").size(), 1U) << "only the first names all";
    EXPECT_EQ(model_files("mlx-community/Qwen3").size(), 1U);
}

TEST(ModelLoad, MeasuresWhatIsReadOfEveryShardMapped) {
    const auto dir =
        std::filesystem::temp_directory_path() / ("ensemble-shards-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto first = (dir / "m-00001-of-00002.gguf").string();
    const auto files = model_files(first);
    ASSERT_EQ(files.size(), 2U);
    constexpr std::size_t kShard = 1 << 20;
    for (const auto& f : files)
        std::ofstream(f, std::ios::binary) << std::string(kShard, 's');
    protocol::WorkerStats none;
    measure_load(files, ::getpid(), none);
    EXPECT_EQ(none.load_file_bytes, 0U) << "nothing mapped yet: no mapping measure";
    // Map both; read all of the first only.
    std::vector<const volatile char*> maps;
    for (const auto& f : files) {
        const int fd = ::open(f.c_str(), O_RDONLY);
        maps.push_back(static_cast<const volatile char*>(
            ::mmap(nullptr, kShard, PROT_READ, MAP_SHARED, fd, 0)));
        ::close(fd);
        ::madvise(const_cast<char*>(maps.back()), kShard, MADV_RANDOM);
    }
    for (std::size_t at = 0; at < kShard; at += 4096)
        (void)maps[0][at];
    protocol::WorkerStats s;
    measure_load(files, ::getpid(), s);
    EXPECT_EQ(s.load_file_bytes, 2 * kShard);
    EXPECT_GE(s.load_mapped_bytes, kShard);
    EXPECT_LT(s.load_mapped_bytes, kShard + kShard / 2);
    for (const auto* m : maps)
        ::munmap(const_cast<char*>(m), kShard);
    std::filesystem::remove_all(dir);
}

}  // namespace
