// How much memory a model will take once its engine serves it, estimated before it is started:
// from a GGUF header (llama.cpp) or an MLX model directory (config.json + *.safetensors), or
// the operator's explicit `memory:`. The memory budget admits and refuses loads on these numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "profiles/gguf.h"
#include "protocol/result.h"

namespace ensemble {

struct MemoryEstimate {
    // Tensor bytes as the engine holds them: the model file mapped, plus the copies its CPU
    // kernels make (llama.cpp's AMX buffer, on CPUs that have AMX).
    std::uint64_t weights = 0;
    std::uint64_t kv_cache = 0;  // keys and values for every cell of every slot
    std::uint64_t compute = 0;   // the engine's activation, attention-mask and output buffers
    std::uint64_t overhead = 0;  // engine runtime (code, heap, threads) plus the worker
    std::string source;          // "configured", "gguf", "mlx" or "proxy"

    // Saturates: a hostile header's sizes add up to "more than any budget", never wrap around.
    std::uint64_t total() const;
};

// What decides the footprint besides the model file.
struct EstimateRequest {
    std::string path;    // model file or directory
    std::string engine;  // the preset: "llama.cpp", "mlx-lm", "vllm", "command"
    int context = 4096;  // llama.cpp: the total over all slots (--ctx-size)
    int parallel = 4;
    std::vector<std::string> engine_args;     // engine and model args (cache types, ubatch)
    std::optional<std::uint64_t> configured;  // `memory:` wins when set
    // In front of another port's model (ModelSpec::upstream): a proxy, holding no weights.
    bool chained = false;
    // The CPU has AMX (os/cpu_features.h): llama.cpp copies its matrix weights for it.
    bool cpu_has_amx = false;
};

// The llama.cpp CPU memory model (calibrated against llama-server; see docs/BENCHMARKS.md).
struct LlamaCppParams {
    int context = 4096;
    int parallel = 4;
    int ubatch = 512;
    std::uint32_t cache_type_k = 1;  // ggml type ids; f16 unless --cache-type-k says otherwise
    std::uint32_t cache_type_v = 1;
    bool kv_unified = false;
    // The engine's CPU backend copies the weights its AMX kernels multiply by into a buffer of
    // its own (the CPU has AMX, and --no-repack/-nr does not turn it off).
    bool amx_copies = false;
    bool no_repack = false;

    // Reads --cache-type-k/-ctk, --cache-type-v/-ctv, --ubatch-size/-ub, --kv-unified/-kvu and
    // --no-repack/-nr (no_repack: no AMX copies, whatever the CPU).
    static Result<LlamaCppParams> from_args(int context, int parallel,
                                            const std::vector<std::string>& args);
};

Result<MemoryEstimate> estimate_memory(const EstimateRequest& request);

Result<MemoryEstimate> estimate_gguf(const gguf::Header& header, const LlamaCppParams& params);

// An MLX model directory: weights from the safetensors headers, KV cache from config.json.
Result<MemoryEstimate> estimate_mlx(const std::string& directory, int context);

}  // namespace ensemble
