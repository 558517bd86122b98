#include "profiles/gguf.h"

#include <array>
#include <fstream>
#include <limits>

namespace ensemble::gguf {

namespace {

struct BlockLayout {
    std::uint32_t type;
    std::uint32_t block_elements;
    std::uint32_t block_bytes;
};

// ggml's block sizes (ggml.c type_traits): elements per block and bytes per block.
constexpr std::array<BlockLayout, 31> kBlockLayouts{{
    {0, 1, 4},      {1, 1, 2},      {2, 32, 18},   {3, 32, 20},    {6, 32, 22},    {7, 32, 24},
    {8, 32, 34},    {9, 32, 36},    {10, 256, 84}, {11, 256, 110}, {12, 256, 144}, {13, 256, 176},
    {14, 256, 210}, {15, 256, 292}, {16, 256, 66}, {17, 256, 74},  {18, 256, 98},  {19, 256, 50},
    {20, 32, 18},   {21, 256, 110}, {22, 256, 82}, {23, 256, 136}, {24, 1, 1},     {25, 1, 2},
    {26, 1, 4},     {27, 1, 8},     {28, 1, 8},    {29, 256, 56},  {30, 1, 2},     {34, 256, 54},
    {35, 256, 66},
}};

// Reads little-endian primitives from a file, failing cleanly at the end of the file.
class Cursor {
  public:
    Cursor(std::istream& in, std::uint64_t size) : in_(in), size_(size) {}

    std::uint64_t position() const { return pos_; }
    std::uint64_t remaining() const { return size_ - pos_; }

    template <typename T>
    bool read(T& out) {
        if (remaining() < sizeof(T)) return false;
        in_.read(reinterpret_cast<char*>(&out), sizeof(T));
        pos_ += sizeof(T);
        return static_cast<bool>(in_);
    }

    bool skip(std::uint64_t n) {
        if (remaining() < n) return false;
        in_.seekg(static_cast<std::streamoff>(n), std::ios::cur);
        pos_ += n;
        return static_cast<bool>(in_);
    }

    bool read_string(std::string& out, std::uint64_t max_bytes) {
        std::uint64_t length = 0;
        if (!read(length) || length > max_bytes || length > remaining()) return false;
        out.resize(length);
        in_.read(out.data(), static_cast<std::streamsize>(length));
        pos_ += length;
        return static_cast<bool>(in_);
    }

  private:
    std::istream& in_;
    std::uint64_t size_;
    std::uint64_t pos_ = 0;
};

class HeaderParser {
  public:
    HeaderParser(std::istream& in, std::uint64_t size, const std::string& name,
                 const Limits& limits)
        : cursor_(in, size), name_(name), limits_(limits) {}

    Result<Header> parse();

  private:
    Error fail(const std::string& what) const {
        return Error{"bad_gguf", name_ + ": not a valid GGUF model: " + what + " (at byte " +
                                     std::to_string(cursor_.position()) +
                                     "); re-download or re-convert the model file"};
    }
    Error truncated(const std::string& what) const { return fail("file ends inside " + what); }

    std::optional<Error> read_metadata(Header& header, std::uint64_t count);
    std::optional<Error> read_value(ValueType type, Value& out, const std::string& key);
    std::optional<Error> skip_array(ValueType element_type, std::uint64_t length,
                                    const std::string& key);
    std::optional<Error> read_tensors(Header& header, std::uint64_t count);

    Cursor cursor_;
    const std::string& name_;
    const Limits& limits_;
};

std::optional<std::uint64_t> scalar_size(ValueType type) {
    switch (type) {
        case ValueType::u8:
        case ValueType::i8:
        case ValueType::boolean:
            return 1;
        case ValueType::u16:
        case ValueType::i16:
            return 2;
        case ValueType::u32:
        case ValueType::i32:
        case ValueType::f32:
            return 4;
        case ValueType::u64:
        case ValueType::i64:
        case ValueType::f64:
            return 8;
        default:
            return std::nullopt;
    }
}

template <typename T>
bool read_as(Cursor& cursor, Value& out) {
    T v{};
    if (!cursor.read(v)) return false;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        out = static_cast<double>(v);
    } else if constexpr (std::is_signed_v<T>) {
        out = static_cast<std::int64_t>(v);
    } else {
        out = static_cast<std::uint64_t>(v);
    }
    return true;
}

std::optional<Error> HeaderParser::read_value(ValueType type, Value& out, const std::string& key) {
    bool ok = false;
    switch (type) {
        case ValueType::u8:
            ok = read_as<std::uint8_t>(cursor_, out);
            break;
        case ValueType::i8:
            ok = read_as<std::int8_t>(cursor_, out);
            break;
        case ValueType::u16:
            ok = read_as<std::uint16_t>(cursor_, out);
            break;
        case ValueType::i16:
            ok = read_as<std::int16_t>(cursor_, out);
            break;
        case ValueType::u32:
            ok = read_as<std::uint32_t>(cursor_, out);
            break;
        case ValueType::i32:
            ok = read_as<std::int32_t>(cursor_, out);
            break;
        case ValueType::u64:
            ok = read_as<std::uint64_t>(cursor_, out);
            break;
        case ValueType::i64:
            ok = read_as<std::int64_t>(cursor_, out);
            break;
        case ValueType::f32:
            ok = read_as<float>(cursor_, out);
            break;
        case ValueType::f64:
            ok = read_as<double>(cursor_, out);
            break;
        case ValueType::boolean: {
            std::uint8_t b = 0;
            ok = cursor_.read(b);
            out = b != 0;
            break;
        }
        case ValueType::string: {
            std::string s;
            ok = cursor_.read_string(s, limits_.max_string_bytes);
            out = std::move(s);
            break;
        }
        case ValueType::array: {
            std::uint32_t element = 0;
            std::uint64_t length = 0;
            if (!cursor_.read(element) || !cursor_.read(length)) return truncated("array " + key);
            if (auto err = skip_array(static_cast<ValueType>(element), length, key)) return err;
            out = ArrayInfo{static_cast<ValueType>(element), length};
            return std::nullopt;
        }
        default:
            return fail("metadata '" + key + "' has unknown value type " +
                        std::to_string(static_cast<std::uint32_t>(type)));
    }
    if (!ok) return truncated("metadata value '" + key + "' (or a string over the length limit)");
    return std::nullopt;
}

std::optional<Error> HeaderParser::skip_array(ValueType element_type, std::uint64_t length,
                                              const std::string& key) {
    if (length > limits_.max_array_length) {
        return fail("array '" + key + "' claims " + std::to_string(length) + " elements (limit " +
                    std::to_string(limits_.max_array_length) + ")");
    }
    if (element_type == ValueType::string) {
        for (std::uint64_t i = 0; i < length; ++i) {
            std::uint64_t n = 0;
            if (!cursor_.read(n) || n > limits_.max_string_bytes || !cursor_.skip(n)) {
                return truncated("string array '" + key + "'");
            }
        }
        return std::nullopt;
    }
    const auto size = scalar_size(element_type);
    if (!size) return fail("array '" + key + "' has an element type that is not a scalar");
    if (!cursor_.skip(*size * length)) return truncated("array '" + key + "'");
    return std::nullopt;
}

std::optional<Error> HeaderParser::read_metadata(Header& header, std::uint64_t count) {
    for (std::uint64_t i = 0; i < count; ++i) {
        std::string key;
        std::uint32_t type = 0;
        if (!cursor_.read_string(key, limits_.max_string_bytes) || !cursor_.read(type)) {
            return truncated("metadata entry " + std::to_string(i));
        }
        Value value;
        if (auto err = read_value(static_cast<ValueType>(type), value, key)) return err;
        header.metadata[key] = std::move(value);
    }
    return std::nullopt;
}

std::optional<Error> HeaderParser::read_tensors(Header& header, std::uint64_t count) {
    header.tensors.reserve(count);
    for (std::uint64_t i = 0; i < count; ++i) {
        TensorInfo t;
        std::uint32_t n_dims = 0;
        if (!cursor_.read_string(t.name, limits_.max_string_bytes) || !cursor_.read(n_dims)) {
            return truncated("tensor info " + std::to_string(i));
        }
        if (n_dims == 0 || n_dims > limits_.max_dims) {
            return fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
        }
        std::uint64_t elements = 1;
        for (std::uint32_t d = 0; d < n_dims; ++d) {
            std::uint64_t dim = 0;
            if (!cursor_.read(dim)) return truncated("tensor '" + t.name + "' shape");
            if (dim == 0 || elements > std::numeric_limits<std::uint64_t>::max() / dim) {
                return fail("tensor '" + t.name + "' has an absurd shape");
            }
            elements *= dim;
            t.dims.push_back(dim);
        }
        if (!cursor_.read(t.type) || !cursor_.read(t.offset)) {
            return truncated("tensor '" + t.name + "' type and offset");
        }
        const auto bytes = type_size(t.type, elements);
        if (!bytes) {
            return fail("tensor '" + t.name + "' has unknown type " + std::to_string(t.type) +
                        " or a row length that is not a whole number of blocks");
        }
        t.bytes = *bytes;
        if (t.bytes > header.file_size || t.offset > header.file_size - t.bytes) {
            return fail("tensor '" + t.name + "' (" + std::to_string(t.bytes) +
                        " bytes) lies beyond the end of the file");
        }
        header.tensors.push_back(std::move(t));
    }
    return std::nullopt;
}

Result<Header> HeaderParser::parse() {
    Header header;
    header.file_size = cursor_.remaining();
    std::array<char, 4> magic{};
    if (!cursor_.read(magic)) return truncated("the magic number");
    if (std::string_view(magic.data(), 4) != "GGUF") return fail("wrong magic (expected 'GGUF')");
    std::uint64_t tensor_count = 0;
    std::uint64_t kv_count = 0;
    if (!cursor_.read(header.version) || !cursor_.read(tensor_count) || !cursor_.read(kv_count)) {
        return truncated("the header");
    }
    if (header.version < 2 || header.version > 3) {
        return fail("unsupported GGUF version " + std::to_string(header.version) +
                    " (2 and 3 are)");
    }
    if (kv_count > limits_.max_metadata_entries) {
        return fail(std::to_string(kv_count) + " metadata entries (limit " +
                    std::to_string(limits_.max_metadata_entries) + ")");
    }
    // Every tensor info takes at least 28 bytes, so the count is also bounded by the file size.
    if (tensor_count > limits_.max_tensors || tensor_count > cursor_.remaining() / 28) {
        return fail(std::to_string(tensor_count) + " tensors in a file of " +
                    std::to_string(header.file_size) + " bytes");
    }
    if (auto err = read_metadata(header, kv_count)) return *err;
    if (auto err = read_tensors(header, tensor_count)) return *err;
    const std::uint64_t alignment = header.get_uint("general.alignment").value_or(32);
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        return fail("general.alignment " + std::to_string(alignment) + " is not a power of two");
    }
    header.data_offset = (cursor_.position() + alignment - 1) / alignment * alignment;
    for (const auto& t : header.tensors) {
        if (header.data_offset + t.offset + t.bytes > header.file_size) {
            return fail("tensor '" + t.name + "' data lies beyond the end of the file");
        }
    }
    return header;
}

}  // namespace

std::optional<std::uint64_t> type_size(std::uint32_t type, std::uint64_t elements) {
    for (const auto& layout : kBlockLayouts) {
        if (layout.type != type) continue;
        if (elements % layout.block_elements != 0) return std::nullopt;
        return elements / layout.block_elements * layout.block_bytes;
    }
    return std::nullopt;
}

std::optional<std::uint64_t> Header::get_uint(const std::string& key) const {
    const auto it = metadata.find(key);
    if (it == metadata.end()) return std::nullopt;
    if (const auto* u = std::get_if<std::uint64_t>(&it->second)) return *u;
    if (const auto* i = std::get_if<std::int64_t>(&it->second); i && *i >= 0) {
        return static_cast<std::uint64_t>(*i);
    }
    return std::nullopt;
}

std::optional<double> Header::get_float(const std::string& key) const {
    const auto it = metadata.find(key);
    if (it == metadata.end()) return std::nullopt;
    if (const auto* d = std::get_if<double>(&it->second)) return *d;
    return std::nullopt;
}

std::optional<std::string> Header::get_string(const std::string& key) const {
    const auto it = metadata.find(key);
    if (it == metadata.end()) return std::nullopt;
    if (const auto* s = std::get_if<std::string>(&it->second)) return *s;
    return std::nullopt;
}

std::uint64_t Header::tensor_bytes() const {
    std::uint64_t total = 0;
    for (const auto& t : tensors)
        total += t.bytes;
    return total;
}

Result<Header> read_header(const std::filesystem::path& path, const Limits& limits) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) {
        return Error{"model_unreadable",
                     path.string() + ": cannot read the model file: " + ec.message()};
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error{"model_unreadable", path.string() + ": cannot open the model file"};
    return read_header(in, size, path.string(), limits);
}

Result<Header> read_header(std::istream& in, std::uint64_t size, const std::string& name,
                           const Limits& limits) {
    return HeaderParser(in, size, name, limits).parse();
}

}  // namespace ensemble::gguf
