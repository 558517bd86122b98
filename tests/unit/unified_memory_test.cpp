// The GPU wired limit against MLX models (supervisor/unified_memory.h), for each thing macOS can
// say: a set sysctl, the system default, a config that differs, and a Linux host checking a
// Mac's config.
#include <gtest/gtest.h>

#include "supervisor/unified_memory.h"

using namespace ensemble;

namespace {

constexpr std::uint64_t GiB = 1ULL << 30;

Config config_with(std::optional<std::uint64_t> wired) {
    Config c;
    c.supervisor.gpu_wired_limit_bytes = wired;
    EngineSpec mlx;
    mlx.name = "mlx";
    mlx.preset = *find_preset("mlx-lm");
    c.engines["mlx"] = mlx;
    for (const auto& [handle, engine] :
         {std::pair{"qwen", "mlx"}, std::pair{"tiny", "llama.cpp"}}) {
        ModelSpec model;
        model.handle = handle;
        model.engine = engine;
        c.models[handle] = model;
    }
    return c;
}

TEST(UnifiedMemory, OnlyMlxModelsCount) {
    const auto c = config_with(std::nullopt);
    EXPECT_TRUE(is_mlx_model(c, "qwen"));
    EXPECT_FALSE(is_mlx_model(c, "tiny"));
    EXPECT_FALSE(is_mlx_model(c, "nope"));
}

TEST(UnifiedMemory, TheSysctlTheSystemDefaultAndTheConfig) {
    const Result<GpuWiredLimit> set = GpuWiredLimit{true, 163840};
    const Result<GpuWiredLimit> zero = GpuWiredLimit{true, 0};
    const Result<GpuWiredLimit> linux_host = GpuWiredLimit{};

    auto v = wired_limit_view(config_with(std::nullopt), set, 192 * GiB, false);
    EXPECT_EQ(v.bytes, 160 * GiB);
    EXPECT_EQ(v.source, "iogpu.wired_limit_mb=163840");

    v = wired_limit_view(config_with(std::nullopt), zero, 192 * GiB, false);
    EXPECT_EQ(v.bytes, default_wired_limit_bytes(192 * GiB));
    EXPECT_NE(v.source.find("the system default, about 75% of 192.0 GiB"), std::string::npos);

    // The config asks for 150 GiB, the machine has 160 GiB set: running, the sysctl is in force;
    // at boot the config's is (deploy/install applies it); either way the difference is told.
    v = wired_limit_view(config_with(150 * GiB), set, 192 * GiB, false);
    EXPECT_EQ(v.bytes, 160 * GiB);
    EXPECT_NE(v.problem.find("iogpu.wired_limit_mb is 163840 but supervisor.gpu_wired_limit asks "
                             "for 153600 MiB: run 'sudo sysctl iogpu.wired_limit_mb=153600'"),
              std::string::npos)
        << v.problem;
    EXPECT_EQ(wired_limit_view(config_with(150 * GiB), set, 192 * GiB, true).bytes, 150 * GiB);

    v = wired_limit_view(config_with(std::nullopt), linux_host, 24 * GiB, true);
    EXPECT_FALSE(v.applies) << "no limit on Linux, none configured";
    v = wired_limit_view(config_with(150 * GiB), linux_host, 24 * GiB, true);
    EXPECT_TRUE(v.applies) << "checking a Mac's config from Linux";
    EXPECT_EQ(v.bytes, 150 * GiB);

    v = wired_limit_view(config_with(std::nullopt), Error{"wired_limit", "cannot read it"},
                         192 * GiB, false);
    EXPECT_FALSE(v.applies);
    EXPECT_EQ(v.problem, "cannot read it");
}

TEST(UnifiedMemory, TheWarningSaysWhatToSetAndHow) {
    const Result<GpuWiredLimit> zero = GpuWiredLimit{true, 0};
    const auto v = wired_limit_view(config_with(std::nullopt), zero, 192 * GiB, false);
    EXPECT_FALSE(wired_limit_warning("profile 'studio'", 100 * GiB, v, 192 * GiB));
    const auto warning = wired_limit_warning("profile 'big'", 150 * GiB, v, 192 * GiB);
    ASSERT_TRUE(warning);
    EXPECT_NE(warning->find("profile 'big': 150.0 GiB of MLX models, more than the GPU wired "
                            "limit of 144.0 GiB"),
              std::string::npos)
        << *warning;
    EXPECT_NE(warning->find("'sudo sysctl iogpu.wired_limit_mb=168960', and set "
                            "supervisor.gpu_wired_limit: 168960MiB"),
              std::string::npos)
        << "165 GiB: 10% above the models" << *warning;
    const auto too_big = wired_limit_warning("profile 'huge'", 190 * GiB, v, 192 * GiB);
    ASSERT_TRUE(too_big);
    EXPECT_NE(too_big->find("do not fit in this machine's 192.0 GiB with 8 GiB left"),
              std::string::npos)
        << *too_big;
    EXPECT_EQ(suggested_wired_limit_mb(180 * GiB, 192 * GiB), 184U * 1024) << "8 GiB left";
    EXPECT_EQ(suggested_wired_limit_mb(10 * GiB, 0), 11264U) << "unknown machine: no cap";
}

}  // namespace
