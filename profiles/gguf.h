// A bounded reader of GGUF model headers (metadata and tensor table; never the weights). Every
// count, length and shape is checked against limits and the file's size before anything is
// allocated, so a corrupt or hostile header is a clear error, never a crash or a huge allocation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <istream>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "protocol/result.h"

namespace ensemble::gguf {

// GGUF metadata value types, as numbered by the format.
enum class ValueType : std::uint32_t {
    u8 = 0,
    i8 = 1,
    u16 = 2,
    i16 = 3,
    u32 = 4,
    i32 = 5,
    f32 = 6,
    boolean = 7,
    string = 8,
    array = 9,
    u64 = 10,
    i64 = 11,
    f64 = 12,
};

// ggml tensor types we know the block layout of (the file may contain others: see type_size).
enum class TensorType : std::uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, bf16 = 30 };

// Arrays keep their element type and length; their elements are skipped (a vocabulary is big).
struct ArrayInfo {
    ValueType element_type;
    std::uint64_t length;
};
using Value = std::variant<std::uint64_t, std::int64_t, double, bool, std::string, ArrayInfo>;

struct TensorInfo {
    std::string name;
    std::vector<std::uint64_t> dims;  // dims[0] is the innermost (row) dimension
    std::uint32_t type = 0;           // ggml type id
    std::uint64_t offset = 0;         // from the start of the data section
    std::uint64_t bytes = 0;          // storage size computed from type and shape
};

struct Header {
    std::uint32_t version = 0;
    std::map<std::string, Value> metadata;
    std::vector<TensorInfo> tensors;
    std::uint64_t data_offset = 0;  // where the tensor data section starts in the file
    std::uint64_t file_size = 0;

    std::optional<std::uint64_t> get_uint(const std::string& key) const;
    std::optional<double> get_float(const std::string& key) const;
    std::optional<std::string> get_string(const std::string& key) const;
    std::uint64_t tensor_bytes() const;
};

struct Limits {
    std::uint64_t max_metadata_entries = 1u << 16;
    std::uint64_t max_tensors = 1u << 20;
    std::uint64_t max_string_bytes = 1u << 20;
    std::uint64_t max_array_length = 1u << 26;
    std::uint32_t max_dims = 4;
};

// Bytes used by `elements` values of ggml type `type`, or nullopt for a type we don't know.
std::optional<std::uint64_t> type_size(std::uint32_t type, std::uint64_t elements);

Result<Header> read_header(const std::filesystem::path& path, const Limits& limits = {});

// The same from any stream of `size` bytes; `name` is used in error messages.
Result<Header> read_header(std::istream& in, std::uint64_t size, const std::string& name,
                           const Limits& limits = {});

}  // namespace ensemble::gguf
