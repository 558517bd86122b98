// A validating single pass over JSON text that finds where a top-level member's values are,
// without building the document. The worker pins `model` in every request body; parsing and
// re-serialising the whole body for that cost ~10 ms per MB (issue 14), splicing costs a copy.
// Accepts exactly what nlohmann::json::parse accepts (RFC 8259, well-formed UTF-8, paired
// surrogate escapes, finite numbers) but for two things, both refused here: a NUL byte (nlohmann
// stops there and ignores what follows) and a leading UTF-8 byte order mark (nlohmann skips it).
// A body we pass on is one the engine reads as we did.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "protocol/bounded_json.h"
#include "protocol/result.h"

namespace ensemble {

struct MemberValue {
    std::size_t key = 0;  // which of the keys asked for
    std::size_t begin = 0;
    std::size_t end = 0;  // one past the value's last byte
};

struct TopLevelScan {
    bool is_object = false;
    std::size_t object_open = 0;  // offset of the top-level object's '{'
    std::size_t members = 0;      // of the top-level object
    // The value of every top-level member whose name, unescaped, is one of the keys, in the
    // order of the text (JSON allows duplicates; parsers keep the last, so each one matters).
    std::vector<MemberValue> values;
};

// Which 64-byte blocks of a text hold only bytes that a JSON string's content passes over as
// they are (printable ASCII but '"' and '\\'), noted while the text arrives and is still in
// cache. The scan below then steps over such blocks inside strings without reading them again: a
// 1 MB body scanned whole after it was read ran out of cache, ~200 µs against ~90 (issue 14).
class PlainBlocks {
  public:
    static constexpr std::size_t kBlock = 64;

    // Notes the blocks completed since the last call. `text` is the text so far: the same text
    // each time, only ever appended to, so that what was noted stays true.
    void extend(std::string_view text);
    std::size_t noted_bytes() const { return noted_text_; }  // the text's length at the last call
    // Whether block `index` (bytes [index * kBlock, (index + 1) * kBlock)) was noted as plain;
    // false for one not noted.
    bool plain(std::size_t index) const {
        return index < noted_ && ((bits_[index / 64] >> (index % 64)) & 1U) != 0;
    }
    // From `offset`, a block boundary, past the plain blocks that follow it (and end by `size`):
    // the offset of the first block not noted as plain; `offset` itself if it is not a boundary.
    std::size_t plain_end(std::size_t offset, std::size_t size) const;

  private:
    std::vector<std::uint64_t> bits_;
    std::size_t noted_ = 0;  // blocks
    std::size_t noted_text_ = 0;
};

// Errors as parse_bounded_json's: "too_deep" or "invalid_json". `plain`, when given, must have
// been noted from this very text (a block it wrongly calls plain would hide a quote from the
// scan); it is not used unless it was noted from a text of this one's length.
Result<TopLevelScan> scan_top_level_members(std::string_view text,
                                            std::span<const std::string_view> keys,
                                            int max_depth = kMaxJsonDepth,
                                            const PlainBlocks* plain = nullptr);
Result<TopLevelScan> scan_top_level_member(std::string_view text, std::string_view key,
                                           int max_depth = kMaxJsonDepth);

}  // namespace ensemble
