// libFuzzer target: arbitrary bytes as a config file through the YAML loader and validator.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "profiles/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const auto path = std::filesystem::temp_directory_path() /
                             ("ensemble-fuzz-config-" + std::to_string(::getpid()) + ".yaml");
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    (void)ensemble::load_config(path, /*check_files=*/false);
    return 0;
}
