// What a worker can see of its engine's load: the model's files, and how much of them is
// resident in the engine's mappings (llama.cpp reads a GGUF's weights from a mapping). The
// supervisor turns it into load progress (supervisor/load_progress.h).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "protocol/messages.h"

namespace ensemble {

// A split GGUF ("name-00001-of-00003.gguf", as llama.cpp's gguf-split writes it, the first one
// named) is every shard; anything else is itself.
std::vector<std::filesystem::path> model_files(const std::string& model);

// Sets `s`'s load_file_bytes (the files' sizes) and load_mapped_bytes (what `engine` has of
// them resident) when it maps any of them; leaves both 0 otherwise (a directory, a repo id, not
// mapped yet).
void measure_load(const std::vector<std::filesystem::path>& files, pid_t engine,
                  protocol::WorkerStats& s);

}  // namespace ensemble
