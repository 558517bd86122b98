// Memory estimates: each part of the llama.cpp model checked against its formula on generated
// GGUF files, MLX directories from safetensors headers, and hostile inputs as clean errors.
// (Estimate against measured llama-server: tests/integration/memory_test.cpp.)
#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "profiles/memory_estimate.h"
#include "profiles/safetensors.h"
#include "tests/fixtures/gguf_writer.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

std::filesystem::path temp_dir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    auto dir = std::filesystem::temp_directory_path() / "ensemble-unit" /
               (std::string(info->test_suite_name()) + "." + info->name());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

// A safetensors file whose header lists `tensors` (name -> bytes), followed by their data.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, std::uint64_t>>& tensors) {
    nlohmann::json header = {{"__metadata__", {{"format", "mlx"}}}};
    std::uint64_t offset = 0;
    for (const auto& [name, bytes] : tensors) {
        header[name] = {
            {"dtype", "F16"}, {"shape", {bytes / 2}}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    const auto text = header.dump();
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t length = text.size();
    for (int i = 0; i < 8; ++i)
        out.put(static_cast<char>((length >> (8 * i)) & 0xff));
    out << text << std::string(offset, '\0');
}

class GgufEstimateTest : public ::testing::Test {
  protected:
    void SetUp() override {
        // small: 4 layers, 128 embedding, 4 heads of 32, 2 KV heads -> 64 KV values per cell
        shape_ = *named_shape("small");
        path_ = temp_dir() / "small.gguf";
        ASSERT_TRUE(write_llama_model(path_, shape_));
        auto header = gguf::read_header(path_);
        ASSERT_TRUE(header) << header.error().message;
        header_ = *header;
    }

    MemoryEstimate estimate(int context, int parallel, std::vector<std::string> args = {}) {
        auto params = LlamaCppParams::from_args(context, parallel, args);
        EXPECT_TRUE(params);
        auto e = estimate_gguf(header_, *params);
        EXPECT_TRUE(e) << e.error().message;
        return e ? *e : MemoryEstimate{};
    }

    ModelShape shape_;
    std::filesystem::path path_;
    gguf::Header header_;
};

constexpr std::uint64_t kKvBytesPerCell = 4 * (64 + 64) * 2;  // layers * (K + V) * f16

TEST_F(GgufEstimateTest, WeightsAreTheTensorBytes) {
    const auto e = estimate(4096, 4);
    EXPECT_EQ(e.weights, header_.tensor_bytes());
    EXPECT_GT(e.weights, std::filesystem::file_size(path_) * 9 / 10);
    EXPECT_EQ(e.source, "gguf");
}

// On a CPU with AMX, llama.cpp copies the weights its AMX kernels multiply by (measured: the
// "AMX model buffer" llama-server reports is exactly those bytes, and it adds to the mapped file).
TEST_F(GgufEstimateTest, AnAmxCpuAddsACopyOfTheMatrixWeightsItsKernelsTake) {
    gguf::Header header = header_;
    const auto tensor = [](std::string name, std::vector<std::uint64_t> dims, std::uint32_t type) {
        std::uint64_t elements = 1;
        for (const auto d : dims)
            elements *= d;
        return gguf::TensorInfo{std::move(name), std::move(dims), type, 0,
                                gguf::type_size(type, elements).value()};
    };
    constexpr std::uint32_t f32 = 0, f16 = 1, q8_0 = 8, q4_k = 12;
    const auto attn_q = tensor("blk.0.attn_q.weight", {128, 128}, f16);
    const auto ffn_up = tensor("blk.0.ffn_up.weight", {256, 64}, q8_0);
    header.tensors = {tensor("token_embd.weight", {128, 1000}, f16),  // looked up, not multiplied
                      attn_q,
                      ffn_up,
                      tensor("blk.0.attn_norm.weight", {128}, f32),
                      tensor("blk.0.narrow.weight", {128, 48}, f16),          // rows not 32x
                      tensor("blk.0.wide.weight", {128, 128}, f32),           // not an AMX type
                      tensor("blk.0.ffn_up_exps.weight", {128, 64, 4}, f16),  // experts: 3-D
                      tensor("blk.0.short.weight", {128, 64}, q4_k)};  // rows of half a block
    const auto weights_with = [&](bool amx, std::vector<std::string> args) {
        auto params = LlamaCppParams::from_args(4096, 4, args);
        EXPECT_TRUE(params);
        params->amx_copies = amx;
        const auto e = estimate_gguf(header, *params);
        EXPECT_TRUE(e) << e.error().message;
        return e ? e->weights : 0;
    };
    EXPECT_EQ(weights_with(false, {}), header.tensor_bytes());
    EXPECT_EQ(weights_with(true, {}), header.tensor_bytes() + attn_q.bytes + ffn_up.bytes);
    EXPECT_EQ(weights_with(true, {"--no-repack"}), header.tensor_bytes());
    EXPECT_EQ(weights_with(true, {"-nr"}), header.tensor_bytes());
}

TEST_F(GgufEstimateTest, KvCacheCoversTheContextSplitAcrossSlots) {
    EXPECT_EQ(estimate(4096, 4).kv_cache, 4096 * kKvBytesPerCell);
    EXPECT_EQ(estimate(4096, 1).kv_cache, 4096 * kKvBytesPerCell);
    EXPECT_EQ(estimate(8192, 2).kv_cache, 8192 * kKvBytesPerCell);
    // Each slot's stream is padded to 256 cells: 512 over 4 slots is 4 x 256, not 512.
    EXPECT_EQ(estimate(512, 4).kv_cache, 1024 * kKvBytesPerCell);
    EXPECT_EQ(estimate(1000, 1).kv_cache, 1024 * kKvBytesPerCell);
    // One unified stream is padded once.
    EXPECT_EQ(estimate(512, 4, {"--kv-unified"}).kv_cache, 512 * kKvBytesPerCell);
}

TEST_F(GgufEstimateTest, CacheTypesChangeTheKvCache) {
    // q8_0: 64 values are two blocks of 34 bytes; f32: 4 bytes each.
    EXPECT_EQ(estimate(4096, 1, {"-ctk", "q8_0", "--cache-type-v", "q8_0"}).kv_cache,
              4096ULL * 4 * (68 + 68));
    EXPECT_EQ(estimate(4096, 1, {"--cache-type-k", "f32"}).kv_cache, 4096ULL * 4 * (256 + 128));
}

TEST_F(GgufEstimateTest, ComputeGrowsWithTheMicroBatchAndTheStream) {
    const auto base = estimate(4096, 4);
    EXPECT_GT(estimate(4096, 1).compute, base.compute);  // a longer stream: a larger mask
    EXPECT_GT(estimate(4096, 4, {"-ub", "1024"}).compute, base.compute);
    EXPECT_EQ(base.compute, 512ULL * 4 * (3 * 256 + 5 * 128) + 512ULL * 2 * 1024 + 4ULL * 1024 * 4);
    EXPECT_GT(base.overhead, 20'000'000U);
}

TEST_F(GgufEstimateTest, BadEngineArgumentsAreErrors) {
    auto unknown = LlamaCppParams::from_args(4096, 1, {"-ctk", "q3_weird"});
    ASSERT_FALSE(unknown);
    EXPECT_NE(unknown.error().message.find("unknown cache type 'q3_weird'"), std::string::npos);
    EXPECT_FALSE(LlamaCppParams::from_args(4096, 1, {"--ubatch-size"}));
    EXPECT_FALSE(LlamaCppParams::from_args(4096, 1, {"-ub", "lots"}));
    EXPECT_FALSE(LlamaCppParams::from_args(4096, 1, {"-ub", "0"}));
}

TEST_F(GgufEstimateTest, AbsurdDimensionsAreErrors) {
    auto hostile = header_;
    hostile.metadata["llama.attention.head_count"] = std::uint64_t{1} << 40;
    EXPECT_FALSE(estimate_gguf(hostile, LlamaCppParams{}));
    hostile = header_;
    hostile.metadata["llama.block_count"] = std::uint64_t{0};
    EXPECT_FALSE(estimate_gguf(hostile, LlamaCppParams{}));
    hostile = header_;
    hostile.metadata["llama.attention.key_length"] = std::uint64_t{1} << 40;
    EXPECT_FALSE(estimate_gguf(hostile, LlamaCppParams{}));
    hostile = header_;
    hostile.metadata.erase("general.architecture");
    EXPECT_FALSE(estimate_gguf(hostile, LlamaCppParams{}));
}

TEST_F(GgufEstimateTest, HugeButBoundedDimensionsSaturateInsteadOfWrapping) {
    auto hostile = header_;
    hostile.metadata["llama.block_count"] = std::uint64_t{100'000};
    hostile.metadata["llama.embedding_length"] = std::uint64_t{1} << 24;
    hostile.metadata["llama.attention.head_count"] = std::uint64_t{1} << 24;
    hostile.metadata["llama.attention.head_count_kv"] = std::uint64_t{1} << 24;
    hostile.metadata["llama.attention.key_length"] = std::uint64_t{1} << 20;
    auto e = estimate_gguf(hostile, *LlamaCppParams::from_args(1 << 24, 1, {}));
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->kv_cache, std::numeric_limits<std::uint64_t>::max());
    EXPECT_EQ(e->total(), std::numeric_limits<std::uint64_t>::max());
}

TEST_F(GgufEstimateTest, EstimateMemoryReadsTheFileAndConfiguredWins) {
    EstimateRequest r;
    r.path = path_.string();
    r.context = 2048;
    r.parallel = 2;
    r.engine_args = {"--threads", "2"};
    auto e = estimate_memory(r);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->kv_cache, 2048 * kKvBytesPerCell);
    r.configured = 12ULL << 30;
    e = estimate_memory(r);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->total(), 12ULL << 30);
    EXPECT_EQ(e->source, "configured");
}

TEST(EstimateMemoryTest, UnknownFilesNeedAnExplicitMemory) {
    const auto dir = temp_dir();
    std::ofstream(dir / "broken.gguf") << "GGUF but not really";
    const std::vector<std::string> paths{"Qwen/Qwen3-8B", (dir / "broken.gguf").string(),
                                         dir.string()};
    for (const auto& path : paths) {
        EstimateRequest r;
        r.path = path;
        auto e = estimate_memory(r);
        ASSERT_FALSE(e) << path;
        EXPECT_NE(e.error().message.find("memory:"), std::string::npos) << e.error().message;
    }
}

// Found by an adversarial run: a deleted model file was reported as "a repo id? set memory:".
TEST(EstimateMemoryTest, AMissingModelFileIsSaidToBeMissing) {
    const auto dir = temp_dir();
    for (const auto& path : {(dir / "deleted.gguf").string(), std::string("./gone/model.gguf")}) {
        EstimateRequest r;
        r.path = path;
        auto e = estimate_memory(r);
        ASSERT_FALSE(e) << path;
        EXPECT_EQ(e.error().code, "model_missing");
        EXPECT_NE(e.error().message.find("does not exist (deleted or moved?)"), std::string::npos)
            << e.error().message;
    }
    EstimateRequest repo;
    repo.path = "mlx-community/Qwen3-8B-4bit";
    EXPECT_EQ(estimate_memory(repo).error().code, "no_estimate") << "a repo id is not a file";
}

TEST(EstimateMemoryTest, VllmNeedsAnExplicitMemory) {
    EstimateRequest r;
    r.path = "Qwen/Qwen3-8B";
    r.engine = "vllm";
    auto e = estimate_memory(r);
    ASSERT_FALSE(e);
    EXPECT_NE(e.error().message.find("gpu-memory-utilization"), std::string::npos);
    r.configured = 20ULL << 30;
    EXPECT_TRUE(estimate_memory(r));
}

TEST(MlxEstimateTest, WeightsFromSafetensorsAndKvFromConfig) {
    const auto dir = temp_dir();
    write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", 4096}, {"b", 1024}});
    write_safetensors(dir / "model-00002-of-00002.safetensors", {{"c", 2048}});
    std::ofstream(dir / "config.json") << R"({"num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 2, "hidden_size": 512, "torch_dtype": "bfloat16"})";
    EstimateRequest r;
    r.path = dir.string();
    r.engine = "mlx-lm";
    r.context = 1000;
    auto e = estimate_memory(r);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->source, "mlx");
    EXPECT_EQ(e->weights, 4096U + 1024 + 2048);
    EXPECT_EQ(e->kv_cache, 4ULL * 2 * 2 * 64 * 2 * 1000);  // layers * K,V * heads * dim * bf16
}

TEST(MlxEstimateTest, TextConfigOfMultimodalModelsIsUsed) {
    const auto dir = temp_dir();
    std::ofstream(dir / "config.json")
        << R"({"text_config": {"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16}})";
    auto shape = read_mlx_config(dir / "config.json");
    ASSERT_TRUE(shape) << shape.error().message;
    EXPECT_EQ(shape->layers, 2U);
    EXPECT_EQ(shape->kv_heads, 4U);
    EXPECT_EQ(shape->head_dim, 16U);
}

TEST(MlxEstimateTest, HostileHeadersAreCleanErrors) {
    const auto dir = temp_dir();
    auto expect_error = [&](const std::string& name, const std::string& bytes,
                            const std::string& says) {
        std::ofstream(dir / name, std::ios::binary) << bytes;
        auto r = safetensors_bytes(dir / name);
        ASSERT_FALSE(r) << name;
        EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
    };
    expect_error("short.safetensors", "abc", "too short");
    expect_error("huge.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}",
                 "claims a");
    expect_error("json.safetensors", std::string("\x05\0\0\0\0\0\0\0", 8) + "{oops", "JSON");
    const std::string beyond =
        R"({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 99999]}})";
    std::string length(8, '\0');
    length[0] = static_cast<char>(beyond.size());
    expect_error("beyond.safetensors", length + beyond, "beyond the end");
    const std::string no_offsets = R"({"w": {"dtype": "F16"}})";
    length[0] = static_cast<char>(no_offsets.size());
    expect_error("offsets.safetensors", length + no_offsets, "data_offsets");

    const auto empty = dir / "empty";
    std::filesystem::create_directories(empty);
    std::ofstream(empty / "config.json") << R"({"num_hidden_layers": 2})";
    EXPECT_FALSE(safetensors_directory_bytes(empty));
    EXPECT_FALSE(read_mlx_config(empty / "config.json"));
    std::ofstream(empty / "config.json") << "[1, 2";
    EXPECT_FALSE(read_mlx_config(empty / "config.json"));
}

}  // namespace
