// libFuzzer target: arbitrary bytes as each model header the memory estimate reads — a GGUF
// header (then estimated), a safetensors header, an MLX config.json. Errors are fine; crashes,
// huge allocations and sanitizer reports are not.
#include <cstddef>
#include <cstdint>
#include <sstream>

#include "profiles/memory_estimate.h"
#include "profiles/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    std::istringstream gguf_in(bytes);
    if (auto header = ensemble::gguf::read_header(gguf_in, size, "fuzz.gguf")) {
        for (int parallel : {1, 3}) {
            auto params = ensemble::LlamaCppParams::from_args(1 << 24, parallel, {"-ctk", "q8_0"});
            if (params) (void)ensemble::estimate_gguf(*header, *params);
        }
    }
    std::istringstream safetensors_in(bytes);
    (void)ensemble::safetensors_bytes(safetensors_in, size, "fuzz.safetensors");
    (void)ensemble::parse_mlx_config(bytes, "config.json");
    return 0;
}
