// Bounded readers for MLX model directories: the JSON header of each *.safetensors file (never
// the tensors) and the shape fields of config.json. A hostile header length, broken JSON or
// offsets beyond the file are errors, never a huge allocation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <istream>
#include <string>

#include "protocol/result.h"

namespace ensemble {

// Tensor bytes in one safetensors file, from its header's data_offsets.
Result<std::uint64_t> safetensors_bytes(const std::filesystem::path& file);

// The same from any stream of `size` bytes; `name` is used in error messages.
Result<std::uint64_t> safetensors_bytes(std::istream& in, std::uint64_t size,
                                        const std::string& name);

// The sum over every *.safetensors file in a directory (there must be at least one).
Result<std::uint64_t> safetensors_directory_bytes(const std::filesystem::path& directory);

struct MlxShape {
    std::uint64_t layers = 0;
    std::uint64_t kv_heads = 0;
    std::uint64_t head_dim = 0;
    std::uint64_t dtype_bytes = 2;  // the KV cache's element size (float16/bfloat16)
};

// num_hidden_layers, num_key_value_heads (default num_attention_heads), head_dim (default
// hidden_size / num_attention_heads), torch_dtype; text_config is used when present.
Result<MlxShape> read_mlx_config(const std::filesystem::path& config_json);

// The same from the text of a config.json; `name` is used in error messages.
Result<MlxShape> parse_mlx_config(const std::string& text, const std::string& name);

}  // namespace ensemble
