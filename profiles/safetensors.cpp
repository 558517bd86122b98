#include "profiles/safetensors.h"

#include <array>
#include <fstream>
#include <nlohmann/json.hpp>

#include "protocol/bounded_json.h"

namespace ensemble {

namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100ULL * 1024 * 1024;  // the format's own limit
constexpr std::uint64_t kMaxConfigBytes = 4ULL * 1024 * 1024;

Error bad(const std::filesystem::path& file, const std::string& why) {
    return Error{"bad_model", file.string() + ": " + why + "; set 'memory:' for this model"};
}

Result<nlohmann::json> parse_object(const std::string& text, const std::filesystem::path& name) {
    auto json = parse_bounded_json(text);
    if (!json) return bad(name, "its JSON is refused: " + json.error().message);
    if (!json->is_object()) return bad(name, "its JSON is not an object");
    return json;
}

std::uint64_t positive(const nlohmann::json& object, const char* key, std::uint64_t fallback) {
    const auto it = object.find(key);
    if (it == object.end() || !it->is_number_unsigned()) return fallback;
    return it->get<std::uint64_t>();
}

std::string string_field(const nlohmann::json& object, const char* key) {
    const auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

Result<std::uint64_t> safetensors_bytes(const std::filesystem::path& file) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(file, ec);
    if (ec) return bad(file, "cannot be read (" + ec.message() + ")");
    std::ifstream in(file, std::ios::binary);
    return safetensors_bytes(in, size, file.string());
}

Result<std::uint64_t> safetensors_bytes(std::istream& in, std::uint64_t size,
                                        const std::string& name) {
    std::array<unsigned char, 8> raw{};
    if (size < 8 || !in.read(reinterpret_cast<char*>(raw.data()), 8))
        return bad(name, "is too short for a safetensors header");
    std::uint64_t length = 0;
    for (int i = 7; i >= 0; --i)
        length = (length << 8) | raw[static_cast<std::size_t>(i)];
    if (length > kMaxHeaderBytes || length > size - 8) {
        return bad(name, "claims a " + std::to_string(length) + "-byte header in a file of " +
                             std::to_string(size) + " bytes");
    }
    std::string text(static_cast<std::size_t>(length), '\0');
    if (!in.read(text.data(), static_cast<std::streamsize>(length)))
        return bad(name, "cannot read its JSON header");
    auto header = parse_object(text, name);
    if (!header) return header.error();
    const std::uint64_t data_size = size - 8 - length;
    std::uint64_t total = 0;
    for (const auto& [tensor_name, tensor] : header->items()) {
        if (tensor_name == "__metadata__") continue;
        const auto offsets = tensor.is_object() ? tensor.find("data_offsets") : tensor.end();
        if (!tensor.is_object() || offsets == tensor.end() || !offsets->is_array() ||
            offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
            !(*offsets)[1].is_number_unsigned()) {
            return bad(name, "tensor '" + tensor_name + "' has no valid data_offsets");
        }
        const auto begin = (*offsets)[0].get<std::uint64_t>();
        const auto end = (*offsets)[1].get<std::uint64_t>();
        if (begin > end || end > data_size)
            return bad(name, "tensor '" + tensor_name + "' lies beyond the end of the file");
        total += end - begin;  // no overflow: each span lies within the file
    }
    return total;
}

Result<std::uint64_t> safetensors_directory_bytes(const std::filesystem::path& directory) {
    std::error_code ec;
    std::uint64_t total = 0;
    int files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(directory, ec)) {
        if (entry.path().extension() != ".safetensors") continue;
        auto bytes = safetensors_bytes(entry.path());
        if (!bytes) return bytes.error();
        total += *bytes;
        ++files;
    }
    if (ec) return bad(directory, "cannot be listed (" + ec.message() + ")");
    if (files == 0) return bad(directory, "holds no *.safetensors files");
    return total;
}

Result<MlxShape> read_mlx_config(const std::filesystem::path& config_json) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(config_json, ec);
    if (ec) return bad(config_json, "cannot be read (" + ec.message() + ")");
    if (size > kMaxConfigBytes) return bad(config_json, "is too large for a model config");
    std::ifstream in(config_json, std::ios::binary);
    std::string text(static_cast<std::size_t>(size), '\0');
    if (!in.read(text.data(), static_cast<std::streamsize>(size)))
        return bad(config_json, "cannot be read");
    return parse_mlx_config(text, config_json.string());
}

Result<MlxShape> parse_mlx_config(const std::string& text, const std::string& name) {
    auto json = parse_object(text, name);
    if (!json) return json.error();
    const auto& root = json->contains("text_config") && (*json)["text_config"].is_object()
                           ? (*json)["text_config"]
                           : *json;
    MlxShape shape;
    shape.layers = positive(root, "num_hidden_layers", 0);
    const auto heads = positive(root, "num_attention_heads", 0);
    const auto hidden = positive(root, "hidden_size", 0);
    if (shape.layers == 0 || heads == 0 || shape.layers > 100'000 || heads > (1U << 16))
        return bad(name, "lacks num_hidden_layers or num_attention_heads");
    shape.kv_heads = std::min(positive(root, "num_key_value_heads", heads), heads);
    shape.head_dim = positive(root, "head_dim", hidden / heads);
    if (shape.head_dim == 0 || shape.head_dim > (1U << 16))
        return bad(name, "lacks head_dim and hidden_size");
    const auto dtype = string_field(root, "torch_dtype").empty()
                           ? string_field(*json, "torch_dtype")
                           : string_field(root, "torch_dtype");
    shape.dtype_bytes = dtype == "float32" ? 4 : 2;
    return shape;
}

}  // namespace ensemble
