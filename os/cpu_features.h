// What the CPU offers that changes an engine's memory: llama.cpp's CPU backend copies matrix
// weights into a buffer of its own for Intel's AMX kernels (Sapphire Rapids and later), in
// addition to the mapped model file.
#pragma once

namespace ensemble {

// Whether the CPU has the AMX-INT8 and AVX512-VNNI instructions llama.cpp's AMX kernels need
// (Linux: /proc/cpuinfo's flags; macOS: never, no Mac has AMX).
bool cpu_has_amx();

}  // namespace ensemble
