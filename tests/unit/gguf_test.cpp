// The GGUF writer round-trips through the bounded reader, and hostile headers are clean errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "profiles/gguf.h"
#include "tests/fixtures/gguf_writer.h"

using namespace ensemble;
using namespace ensemble::testing;

namespace {

// Tests run as parallel processes: each gets a directory of its own.
std::filesystem::path temp_file(const std::string& name) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    auto dir = std::filesystem::temp_directory_path() / "ensemble-unit" /
               (std::string(info->test_suite_name()) + "." + info->name());
    std::filesystem::create_directories(dir);
    return dir / name;
}

std::vector<char> read_all(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void write_all(const std::filesystem::path& p, const std::vector<char>& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class GgufTest : public ::testing::Test {
  protected:
    void SetUp() override {
        path_ = temp_file("roundtrip.gguf");
        shape_ = *named_shape("tiny");
        ASSERT_TRUE(write_llama_model(path_, shape_));
        bytes_ = read_all(path_);
    }
    std::filesystem::path path_;
    ModelShape shape_;
    std::vector<char> bytes_;
};

TEST_F(GgufTest, TinyModelIsUnderOneMegabyte) {
    EXPECT_LT(bytes_.size(), 1U << 20);
}

TEST_F(GgufTest, WriterRoundTripsThroughTheReader) {
    auto h = gguf::read_header(path_);
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_EQ(h->version, 3U);
    EXPECT_EQ(h->get_string("general.architecture"), "llama");
    EXPECT_EQ(h->get_uint("llama.embedding_length"), shape_.embedding);
    EXPECT_EQ(h->get_uint("llama.block_count"), shape_.layers);
    EXPECT_EQ(h->get_uint("llama.attention.head_count_kv"), shape_.kv_heads);
    EXPECT_EQ(h->get_uint("llama.context_length"), shape_.context);
    EXPECT_NEAR(*h->get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
    const auto& tokens = std::get<gguf::ArrayInfo>(h->metadata.at("tokenizer.ggml.tokens"));
    EXPECT_EQ(tokens.length, shape_.vocab);
    EXPECT_EQ(h->tensors.size(), 3U + 9U * shape_.layers);
    // F32 weights: the tensor bytes are exactly four per parameter, and fill the file's tail.
    EXPECT_EQ(h->tensor_bytes(), shape_.parameter_count() * 4);
    EXPECT_LE(h->data_offset + h->tensor_bytes(), h->file_size);
}

TEST_F(GgufTest, F16WeightsHalveTheMatrices) {
    auto shape = shape_;
    shape.type = WeightType::f16;
    const auto p = temp_file("f16.gguf");
    ASSERT_TRUE(write_llama_model(p, shape));
    auto h = gguf::read_header(p);
    ASSERT_TRUE(h) << h.error().message;
    std::uint64_t norms = 0;
    for (const auto& t : h->tensors) {
        if (t.dims.size() == 1) norms += t.dims[0];
        EXPECT_EQ(t.type, t.dims.size() == 1 ? 0U : 1U) << t.name;
    }
    EXPECT_EQ(h->tensor_bytes(), (shape.parameter_count() - norms) * 2 + norms * 4);
}

TEST_F(GgufTest, WrongMagicIsRejected) {
    auto bad = bytes_;
    bad[0] = 'X';
    write_all(temp_file("magic.gguf"), bad);
    auto h = gguf::read_header(temp_file("magic.gguf"));
    ASSERT_FALSE(h);
    EXPECT_NE(h.error().message.find("wrong magic"), std::string::npos);
}

TEST_F(GgufTest, EveryTruncationOfTheHeaderIsACleanError) {
    auto h = gguf::read_header(path_);
    ASSERT_TRUE(h);
    // Every cut inside the header (metadata and tensor table) and a sample of cuts in the data.
    const std::string whole(bytes_.begin(), bytes_.end());
    for (std::size_t cut = 0; cut < bytes_.size(); cut += cut < h->data_offset ? 1 : 4093) {
        std::istringstream in(whole.substr(0, cut));
        auto r = gguf::read_header(in, cut, "truncated.gguf");
        ASSERT_FALSE(r) << "accepted a file cut at byte " << cut;
        EXPECT_EQ(r.error().code, "bad_gguf");
    }
}

TEST_F(GgufTest, HugeCountsAreRejectedWithoutAllocating) {
    auto bad = bytes_;
    const std::uint64_t huge = ~std::uint64_t{0} / 3;
    std::memcpy(bad.data() + 8, &huge, 8);  // tensor count
    write_all(temp_file("huge-tensors.gguf"), bad);
    EXPECT_FALSE(gguf::read_header(temp_file("huge-tensors.gguf")));
    bad = bytes_;
    std::memcpy(bad.data() + 16, &huge, 8);  // metadata count
    write_all(temp_file("huge-kv.gguf"), bad);
    EXPECT_FALSE(gguf::read_header(temp_file("huge-kv.gguf")));
    bad = bytes_;
    std::memcpy(bad.data() + 24, &huge, 8);  // length of the first key
    write_all(temp_file("huge-string.gguf"), bad);
    EXPECT_FALSE(gguf::read_header(temp_file("huge-string.gguf")));
}

TEST_F(GgufTest, AbsurdTensorShapeIsRejected) {
    auto h = gguf::read_header(path_);
    ASSERT_TRUE(h);
    // Find the first tensor's first dimension in the file: after its name and n_dims.
    const std::string name = h->tensors.front().name;
    const auto it = std::search(bytes_.begin(), bytes_.end(), name.begin(), name.end());
    ASSERT_NE(it, bytes_.end());
    const auto dim_offset = static_cast<std::size_t>(it - bytes_.begin()) + name.size() + 4;
    auto bad = bytes_;
    const std::uint64_t absurd = std::uint64_t{1} << 62;
    std::memcpy(bad.data() + dim_offset, &absurd, 8);
    write_all(temp_file("shape.gguf"), bad);
    auto r = gguf::read_header(temp_file("shape.gguf"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, "bad_gguf");
}

TEST(GgufTypes, BlockSizesMatchGgml) {
    EXPECT_EQ(gguf::type_size(0, 10), 40U);     // F32
    EXPECT_EQ(gguf::type_size(1, 10), 20U);     // F16
    EXPECT_EQ(gguf::type_size(8, 64), 68U);     // Q8_0: 34 bytes per 32
    EXPECT_EQ(gguf::type_size(12, 256), 144U);  // Q4_K
    EXPECT_FALSE(gguf::type_size(2, 31));       // not a whole block
    EXPECT_FALSE(gguf::type_size(999, 32));     // unknown type
}

TEST(GgufFiles, MissingFileIsAClearError) {
    auto r = gguf::read_header("/nonexistent/model.gguf");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, "model_unreadable");
}

}  // namespace
