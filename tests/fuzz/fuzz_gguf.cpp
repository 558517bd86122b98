// libFuzzer target: arbitrary bytes as a GGUF model header through the bounded reader.
#include <cstddef>
#include <cstdint>
#include <sstream>

#include "profiles/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
    (void)ensemble::gguf::read_header(in, size, "fuzz.gguf");
    return 0;
}
