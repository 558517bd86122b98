#include "profiles/memory_estimate.h"

#include <array>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <string_view>

#include "profiles/safetensors.h"

namespace ensemble {

namespace {

// Calibrated against llama-server (llama.cpp build 11669, CPU backend) on generated models of
// 3-400 MB at contexts 512-32768 and 1-4 slots: see tests/integration/memory_test.cpp and
// docs/BENCHMARKS.md. What is not weights, KV cache or compute buffers: code, heap (vocabulary,
// graph), thread stacks; it grows a little with the number of layers.
constexpr std::uint64_t kLlamaRuntimeBytes = 20'000'000;
constexpr std::uint64_t kLlamaPerLayerBytes = 500'000;
// llama.cpp pads KV cache sizes to this many cells.
constexpr std::uint64_t kCellPadding = 256;
// The Ensemble worker in front of the engine (its own PSS, measured: 5.6-6.0 MB).
constexpr std::uint64_t kWorkerBytes = 6'000'000;
// An MLX server is a Python process with the MLX runtime; not calibrated (no Apple hardware in
// CI): a deliberately round number until someone measures one.
constexpr std::uint64_t kMlxRuntimeBytes = 600ULL * 1024 * 1024;
// A proxy in front of another port's model (OptiLLM: Python, Flask, the OpenAI client) holds no
// weights; not measured (OptiLLM cannot be installed here): a round number until someone does.
constexpr std::uint64_t kProxyRuntimeBytes = 300ULL * 1024 * 1024;

struct CacheTypeName {
    std::string_view name;
    std::uint32_t type;
};
constexpr std::array<CacheTypeName, 9> kCacheTypes{{{"f32", 0},
                                                    {"f16", 1},
                                                    {"bf16", 30},
                                                    {"q8_0", 8},
                                                    {"q4_0", 2},
                                                    {"q4_1", 3},
                                                    {"iq4_nl", 20},
                                                    {"q5_0", 6},
                                                    {"q5_1", 7}}};

std::optional<std::uint32_t> cache_type(std::string_view name) {
    for (const auto& t : kCacheTypes) {
        if (t.name == name) return t.type;
    }
    return std::nullopt;
}

std::uint64_t pad(std::uint64_t n, std::uint64_t to) {
    return (n + to - 1) / to * to;
}

// Products and sums of header values saturate instead of wrapping around: a hostile model must
// not look small to the budget.
constexpr auto kSaturated = std::numeric_limits<std::uint64_t>::max();

std::uint64_t mul(std::initializer_list<std::uint64_t> factors) {
    std::uint64_t product = 1;
    for (auto f : factors) {
        if (__builtin_mul_overflow(product, f, &product)) return kSaturated;
    }
    return product;
}

std::uint64_t add(std::initializer_list<std::uint64_t> terms) {
    std::uint64_t sum = 0;
    for (auto t : terms) {
        if (__builtin_add_overflow(sum, t, &sum)) return kSaturated;
    }
    return sum;
}

Error bad_arg(const std::string& flag, const std::string& why) {
    return Error{"bad_engine_args", "engine argument " + flag + ": " + why};
}

// Model dimensions read from `<arch>.*` metadata, with llama.cpp's defaults.
struct Dimensions {
    std::uint64_t layers = 0, embedding = 0, heads = 0, kv_heads = 0, key_length = 0,
                  value_length = 0, feed_forward = 0, vocab = 0;
};

Result<Dimensions> dimensions(const gguf::Header& h) {
    const auto arch = h.get_string("general.architecture");
    if (!arch) return Error{"bad_model", "the GGUF header names no general.architecture"};
    const std::string p = *arch + ".";
    Dimensions d;
    d.layers = h.get_uint(p + "block_count").value_or(0);
    d.embedding = h.get_uint(p + "embedding_length").value_or(0);
    d.heads = h.get_uint(p + "attention.head_count").value_or(0);
    if (d.layers == 0 || d.embedding == 0 || d.heads == 0 || d.layers > 100'000 ||
        d.embedding > (1U << 24) || d.heads > d.embedding) {
        return Error{"bad_model", "the GGUF header of a '" + *arch +
                                      "' model lacks sensible block_count, embedding_length or "
                                      "attention.head_count; set 'memory:' for this model"};
    }
    // Per-layer arrays (some architectures) are not read: the plain value or the head count.
    d.kv_heads = std::min(h.get_uint(p + "attention.head_count_kv").value_or(d.heads), d.heads);
    d.key_length = h.get_uint(p + "attention.key_length").value_or(d.embedding / d.heads);
    d.value_length = h.get_uint(p + "attention.value_length").value_or(d.embedding / d.heads);
    d.feed_forward = h.get_uint(p + "feed_forward_length").value_or(4 * d.embedding);
    d.vocab = h.get_uint(p + "vocab_size").value_or(0);
    for (const auto& t : h.tensors) {
        if (t.name == "token_embd.weight" && t.dims.size() >= 2) d.vocab = t.dims[1];
    }
    if (d.key_length > (1U << 20) || d.value_length > (1U << 20) || d.feed_forward > (1U << 26) ||
        d.vocab > (1U << 26)) {
        return Error{"bad_model", "the GGUF header has absurd attention or vocabulary sizes"};
    }
    return d;
}

// The bytes llama.cpp's CPU backend copies into its AMX buffer (ggml-cpu/amx/amx.cpp,
// supports_op): the weights of matrix multiplications (2-D; not the token, position or type
// embeddings, which are looked up) of a type AMX kernels take, with rows a multiple of 32 and
// row lengths a multiple of the type's block. Measured here: F16 (the buffer llama-server
// reports, byte for byte); the quantized types' packed layout is counted at their file size.
std::uint64_t amx_copy_bytes(const gguf::Header& header) {
    std::uint64_t total = 0;
    for (const auto& t : header.tensors) {
        if (t.dims.size() < 2 || t.name.starts_with("token_embd.") ||
            t.name.starts_with("position_embd.") || t.name.starts_with("token_types."))
            continue;
        bool two_dimensional = true;
        for (std::size_t i = 2; i < t.dims.size(); ++i)
            two_dimensional = two_dimensional && t.dims[i] == 1;
        std::uint64_t block = 0;  // the row length's multiple; 0: not an AMX type
        switch (t.type) {
            case 1:  // F16
                block = 16;
                break;
            case 2:  // Q4_0
            case 3:  // Q4_1
            case 8:  // Q8_0
                block = 32;
                break;
            case 12:  // Q4_K
            case 13:  // Q5_K
            case 14:  // Q6_K
            case 23:  // IQ4_XS
                block = 256;
                break;
            default:
                break;
        }
        if (two_dimensional && block != 0 && t.dims[0] % block == 0 && t.dims[1] % 32 == 0)
            total = add({total, t.bytes});
    }
    return total;
}

}  // namespace

std::uint64_t MemoryEstimate::total() const {
    return add({weights, kv_cache, compute, overhead});
}

Result<LlamaCppParams> LlamaCppParams::from_args(int context, int parallel,
                                                 const std::vector<std::string>& args) {
    LlamaCppParams p;
    p.context = context;
    p.parallel = parallel;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto& flag = args[i];
        const bool takes_value = flag == "-ctk" || flag == "--cache-type-k" || flag == "-ctv" ||
                                 flag == "--cache-type-v" || flag == "-ub" ||
                                 flag == "--ubatch-size";
        if (flag == "-kvu" || flag == "--kv-unified") p.kv_unified = true;
        if (flag == "-nr" || flag == "--no-repack") p.no_repack = true;
        if (!takes_value) continue;
        if (i + 1 == args.size()) return bad_arg(flag, "needs a value");
        const auto& value = args[++i];
        if (flag == "-ub" || flag == "--ubatch-size") {
            try {
                p.ubatch = std::stoi(value);
            } catch (const std::exception&) {
                return bad_arg(flag, "'" + value + "' is not a number");
            }
            if (p.ubatch < 1 || p.ubatch > (1 << 20)) return bad_arg(flag, "out of range");
            continue;
        }
        const auto type = cache_type(value);
        if (!type) {
            return bad_arg(flag, "unknown cache type '" + value +
                                     "' (f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)");
        }
        (flag == "-ctk" || flag == "--cache-type-k" ? p.cache_type_k : p.cache_type_v) = *type;
    }
    return p;
}

Result<MemoryEstimate> estimate_gguf(const gguf::Header& header, const LlamaCppParams& params) {
    auto dims = dimensions(header);
    if (!dims) return dims.error();
    const auto& d = *dims;
    const auto parallel = static_cast<std::uint64_t>(std::max(params.parallel, 1));
    const std::uint64_t context =
        pad(static_cast<std::uint64_t>(std::max(params.context, 1)), kCellPadding);
    // Without --kv-unified every slot has its own stream of context/parallel cells.
    const std::uint64_t streams = params.kv_unified ? 1 : parallel;
    const std::uint64_t cells_per_stream = pad(context / streams, kCellPadding);
    const std::uint64_t cells = cells_per_stream * streams;

    MemoryEstimate e;
    e.source = "gguf";
    e.weights = header.tensor_bytes();
    if (params.amx_copies && !params.no_repack)
        e.weights = add({e.weights, amx_copy_bytes(header)});
    const auto k_row = gguf::type_size(params.cache_type_k, d.kv_heads * d.key_length);
    const auto v_row = gguf::type_size(params.cache_type_v, d.kv_heads * d.value_length);
    if (!k_row || !v_row) {
        return Error{"bad_model",
                     "the KV cache type does not fit this model's head size "
                     "(rows must be whole blocks); use f16 or set 'memory:'"};
    }
    e.kv_cache = mul({d.layers, cells, add({*k_row, *v_row})});
    // Activations for one micro-batch, the f16 attention mask over a stream's cells, and the
    // logits of one output per slot (llama.cpp reserves its graph for that worst case).
    const std::uint64_t ubatch = std::min<std::uint64_t>(params.ubatch, context);
    e.compute = add({mul({ubatch, 4, add({mul({3, d.feed_forward}), mul({5, d.embedding})})}),
                     mul({ubatch, 2, cells_per_stream}), mul({parallel, d.vocab, 4})});
    e.overhead = kLlamaRuntimeBytes + kLlamaPerLayerBytes * d.layers + kWorkerBytes;
    return e;
}

Result<MemoryEstimate> estimate_mlx(const std::string& directory, int context) {
    auto weights = safetensors_directory_bytes(directory);
    if (!weights) return weights.error();
    auto shape = read_mlx_config(std::filesystem::path(directory) / "config.json");
    if (!shape) return shape.error();
    MemoryEstimate e;
    e.source = "mlx";
    e.weights = *weights;
    e.kv_cache = mul({shape->layers, 2, shape->kv_heads, shape->head_dim, shape->dtype_bytes,
                      static_cast<std::uint64_t>(std::max(context, 1))});
    e.overhead = kMlxRuntimeBytes + kWorkerBytes;
    return e;
}

Result<MemoryEstimate> estimate_memory(const EstimateRequest& r) {
    if (r.configured) {
        MemoryEstimate e;
        e.source = "configured";
        e.weights = *r.configured;
        return e;
    }
    if (r.chained) {
        MemoryEstimate e;
        e.source = "proxy";
        e.overhead = kProxyRuntimeBytes + kWorkerBytes;
        return e;
    }
    if (r.engine == "vllm") {
        return Error{"no_estimate",
                     "vLLM reserves a share of the GPU (--gpu-memory-utilization) rather than "
                     "what the model needs; set 'memory:' for this model"};
    }
    std::error_code ec;
    const std::filesystem::path path(r.path);
    if (std::filesystem::is_directory(path, ec)) {
        if (std::filesystem::exists(path / "config.json", ec))
            return estimate_mlx(r.path, r.context);
        return Error{"no_estimate", "'" + r.path +
                                        "' is a directory without config.json; set 'memory:' "
                                        "for this model"};
    }
    // A path (not a repo id such as "mlx-community/Qwen3-8B-4bit") that is not there is a
    // missing model, and says so.
    const bool names_a_file = path.is_absolute() || r.path.starts_with(".") ||
                              path.extension() == ".gguf" || path.extension() == ".safetensors";
    if (names_a_file && !std::filesystem::exists(path, ec)) {
        return Error{"model_missing", "the model file '" + r.path +
                                          "' does not exist (deleted or moved?); restore it or "
                                          "fix the model's path"};
    }
    if (!std::filesystem::is_regular_file(path, ec)) {
        return Error{"no_estimate", "'" + r.path +
                                        "' is not a local model file or directory (a repo id?), "
                                        "so its size is unknown; set 'memory:' for this model"};
    }
    auto header = gguf::read_header(path);
    if (!header) {
        return Error{"no_estimate", header.error().message +
                                        "; a model whose header cannot be read needs 'memory:'"};
    }
    auto params = LlamaCppParams::from_args(r.context, r.parallel, r.engine_args);
    if (!params) return params.error();
    params->amx_copies = r.cpu_has_amx;
    return estimate_gguf(*header, *params);
}

}  // namespace ensemble
