#include "protocol/json_scan.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace ensemble {

namespace {

using Bytes = signed char __attribute__((vector_size(16)));

// Each lane all ones where the byte ends a plain run of string content: below 0x20 (a control
// character), 0x80 and above (UTF-8 to check), '"' or '\\'. As a signed byte, a control
// character and any byte >= 0x80 are both below 0x20: one comparison. (The compiler's vector
// extension: SSE2 on x86-64, NEON on Apple silicon.)
inline Bytes stops16(const char* at) {
    const auto splat = [](char b) { return Bytes{} + static_cast<signed char>(b); };
    Bytes v;
    std::memcpy(&v, at, 16);
    return (v < splat(0x20)) | (v == splat('"')) | (v == splat('\\'));
}

inline bool any_lane(Bytes lanes) {
    using Words = std::uint64_t __attribute__((vector_size(16)));
    Words words;
    std::memcpy(&words, &lanes, 16);
    return (words[0] | words[1]) != 0;
}

// The first lane set, or 16 if none is. Lanes are bytes in memory order: in a word read from
// them, the first is the lowest byte on a little-endian machine and the highest on a big one.
inline std::size_t first_set_byte(std::uint64_t word) {
    const int bits = std::endian::native == std::endian::little ? std::countr_zero(word)
                                                                : std::countl_zero(word);
    return static_cast<std::size_t>(bits) / 8;
}

inline std::size_t first_lane(Bytes lanes) {
    using Words = std::uint64_t __attribute__((vector_size(16)));
    Words words;
    std::memcpy(&words, &lanes, 16);
    if (words[0] != 0) return first_set_byte(words[0]);
    if (words[1] != 0) return 8 + first_set_byte(words[1]);
    return 16;
}

inline bool plain64(const char* at) {
    return !any_lane(stops16(at) | stops16(at + 16) | stops16(at + 32) | stops16(at + 48));
}

// The first byte in [from, to) that ends a plain run, or `to`. The bulk of a body is such
// content: 64 bytes at a time, then 16 with the stop's place read from the lanes, and byte by
// byte only in the last 15.
std::size_t plain_run_end(const char* data, std::size_t from, std::size_t to) {
    std::size_t i = from;
    while (to - i >= 64 && plain64(data + i))
        i += 64;
    for (; to - i >= 16; i += 16) {
        const auto stop = first_lane(stops16(data + i));
        if (stop < 16) return i + stop;
    }
    while (i < to) {
        const auto b = static_cast<unsigned char>(data[i]);
        if (b < 0x20 || b >= 0x80 || b == '"' || b == '\\') break;
        ++i;
    }
    return i;
}

class Scanner {
  public:
    Scanner(std::string_view text, std::span<const std::string_view> keys, int max_depth,
            const PlainBlocks* plain)
        : s_(text), keys_(keys), max_depth_(max_depth), plain_(plain) {}

    Result<TopLevelScan> run() {
        skip_space();
        if (!value(0)) return failure();
        skip_space();
        if (i_ != s_.size()) return invalid();
        return std::move(result_);
    }

  private:
    Error failure() const {
        if (too_deep_) {
            return Error{"too_deep", "it nests arrays and objects more than " +
                                         std::to_string(max_depth_) + " levels deep"};
        }
        return invalid();
    }
    static Error invalid() { return Error{"invalid_json", "it is not valid JSON"}; }

    bool at_end() const { return i_ >= s_.size(); }
    unsigned char peek() const { return static_cast<unsigned char>(s_[i_]); }

    void skip_space() {
        while (!at_end() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
            ++i_;
    }

    bool literal(std::string_view word) {
        if (s_.substr(i_, word.size()) != word) return false;
        i_ += word.size();
        return true;
    }

    // Containers are walked with recursion bounded by max_depth (128 frames of a few words).
    bool value(int depth) {
        if (at_end()) return false;
        switch (s_[i_]) {
            case '{':
                return object(depth + 1);
            case '[':
                return array(depth + 1);
            case '"':
                return string(nullptr);
            case 't':
                return literal("true");
            case 'f':
                return literal("false");
            case 'n':
                return literal("null");
            default:
                return number();
        }
    }

    bool object(int depth) {
        if (depth > max_depth_) {
            too_deep_ = true;
            return false;
        }
        const bool top = depth == 1;
        if (top) {
            result_.is_object = true;
            result_.object_open = i_;
        }
        ++i_;  // '{'
        skip_space();
        if (!at_end() && s_[i_] == '}') {
            ++i_;
            return true;
        }
        for (;;) {
            skip_space();
            if (at_end() || s_[i_] != '"') return false;
            std::optional<std::size_t> key;
            if (!string(top ? &key : nullptr)) return false;
            skip_space();
            if (at_end() || s_[i_] != ':') return false;
            ++i_;
            skip_space();
            const auto begin = i_;
            if (!value(depth)) return false;
            if (top) {
                ++result_.members;
                if (key) result_.values.push_back({*key, begin, i_});
            }
            skip_space();
            if (at_end()) return false;
            if (s_[i_] == '}') {
                ++i_;
                return true;
            }
            if (s_[i_] != ',') return false;
            ++i_;
        }
    }

    bool array(int depth) {
        if (depth > max_depth_) {
            too_deep_ = true;
            return false;
        }
        ++i_;  // '['
        skip_space();
        if (!at_end() && s_[i_] == ']') {
            ++i_;
            return true;
        }
        for (;;) {
            skip_space();
            if (!value(depth)) return false;
            skip_space();
            if (at_end()) return false;
            if (s_[i_] == ']') {
                ++i_;
                return true;
            }
            if (s_[i_] != ',') return false;
            ++i_;
        }
    }

    bool digits() {
        const auto start = i_;
        while (!at_end() && s_[i_] >= '0' && s_[i_] <= '9')
            ++i_;
        return i_ > start;
    }

    bool number() {
        const auto start = i_;
        if (!at_end() && s_[i_] == '-') ++i_;
        if (at_end()) return false;
        if (s_[i_] == '0') {
            ++i_;
        } else if (!digits()) {
            return false;
        }
        if (!at_end() && s_[i_] == '.') {
            ++i_;
            if (!digits()) return false;
        }
        if (!at_end() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (!at_end() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (!digits()) return false;
            return finite(start);
        }
        // Without an exponent, up to 308 characters cannot reach DBL_MAX (~1.8e308).
        return i_ - start <= 308 || finite(start);
    }

    // nlohmann refuses a number too large for a double ("number overflow"). Rare: strtod (this
    // program never changes its C locale) decides only for numbers that could be that large.
    bool finite(std::size_t start) const {
        const std::string token(s_.substr(start, i_ - start));
        return std::isfinite(std::strtod(token.c_str(), nullptr));
    }

    bool hex4(unsigned& out) {
        if (s_.size() - i_ < 4) return false;
        out = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s_[i_++];
            out <<= 4;
            if (c >= '0' && c <= '9') {
                out |= static_cast<unsigned>(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                out |= static_cast<unsigned>(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                out |= static_cast<unsigned>(c - 'A' + 10);
            } else {
                return false;
            }
        }
        return true;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    // Past string content with nothing to check; past whole blocks noted as plain without
    // reading them.
    void skip_plain_ascii() {
        constexpr auto kBlock = PlainBlocks::kBlock;
        const char* const data = s_.data();
        const std::size_t size = s_.size();
        std::size_t i = i_;
        if (plain_ != nullptr) {
            const std::size_t boundary = std::min(size, (i + kBlock - 1) / kBlock * kBlock);
            i = plain_run_end(data, i, boundary);
            if (i == boundary) i = plain_->plain_end(i, size);  // (a boundary unless the end)
        }
        i_ = plain_run_end(data, i, size);
    }

    // One well-formed UTF-8 sequence of two or more bytes (RFC 3629, table 3-7 of Unicode).
    bool utf8_sequence() {
        const unsigned char lead = peek();
        int continuation = 0;
        unsigned char low = 0x80, high = 0xBF;  // the second byte's range
        if (lead >= 0xC2 && lead <= 0xDF) {
            continuation = 1;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            continuation = 2;
            if (lead == 0xE0) low = 0xA0;
            if (lead == 0xED) high = 0x9F;  // no surrogates
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            continuation = 3;
            if (lead == 0xF0) low = 0x90;
            if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
        } else {
            return false;
        }
        ++i_;
        for (int k = 0; k < continuation; ++k, low = 0x80, high = 0xBF) {
            if (at_end() || peek() < low || peek() > high) return false;
            ++i_;
        }
        return true;
    }

    // A string; when `matches` is given, which key its unescaped content is, if any. A key
    // without escapes is compared where it stands; one with escapes is unescaped first.
    bool string(std::optional<std::size_t>* matches) {
        ++i_;  // '"'
        const std::size_t start = i_;
        std::string unescaped;  // only for a key with escapes
        bool escaped = false;
        std::size_t copied = start;  // (escaped) the content before this is in `unescaped`
        for (;;) {
            skip_plain_ascii();
            if (at_end()) return false;
            const unsigned char c = peek();
            if (c == '"') break;
            if (c < 0x20) return false;
            if (c >= 0x80) {
                if (!utf8_sequence()) return false;
                continue;
            }
            if (c != '\\') {
                ++i_;
                continue;
            }
            if (matches) {
                unescaped.append(s_.substr(copied, i_ - copied));
                escaped = true;
            }
            ++i_;
            if (at_end()) return false;
            const char e = s_[i_++];
            unsigned cp = 0;
            switch (e) {
                case '"':
                case '\\':
                case '/':
                    cp = static_cast<unsigned char>(e);
                    break;
                case 'b':
                    cp = '\b';
                    break;
                case 'f':
                    cp = '\f';
                    break;
                case 'n':
                    cp = '\n';
                    break;
                case 'r':
                    cp = '\r';
                    break;
                case 't':
                    cp = '\t';
                    break;
                case 'u': {
                    if (!hex4(cp)) return false;
                    if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // a lone low surrogate
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        unsigned low = 0;
                        if (!literal("\\u") || !hex4(low) || low < 0xDC00 || low > 0xDFFF)
                            return false;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    break;
                }
                default:
                    return false;
            }
            if (matches) append_utf8(unescaped, cp);
            copied = i_;
        }
        if (matches) {
            std::string_view content = s_.substr(start, i_ - start);
            if (escaped) {
                unescaped.append(s_.substr(copied, i_ - copied));
                content = unescaped;
            }
            const auto found = std::find(keys_.begin(), keys_.end(), content);
            if (found != keys_.end()) *matches = static_cast<std::size_t>(found - keys_.begin());
        }
        ++i_;  // '"'
        return true;
    }

    std::string_view s_;
    std::span<const std::string_view> keys_;
    int max_depth_;
    const PlainBlocks* plain_;
    std::size_t i_ = 0;
    bool too_deep_ = false;
    TopLevelScan result_;
};

}  // namespace

void PlainBlocks::extend(std::string_view text) {
    noted_text_ = text.size();
    const std::size_t complete = text.size() / kBlock;
    if (complete <= noted_) return;
    bits_.resize((complete + 63) / 64, 0);
    static_assert(kBlock == 64, "plain64 tests one block");
    for (std::size_t block = noted_; block < complete; ++block) {
        if (plain64(text.data() + block * kBlock))
            bits_[block / 64] |= std::uint64_t{1} << (block % 64);
    }
    noted_ = complete;
}

std::size_t PlainBlocks::plain_end(std::size_t offset, std::size_t size) const {
    if (offset % kBlock != 0) return offset;                   // (never behind where the scan is)
    const std::size_t last = std::min(noted_, size / kBlock);  // blocks wholly inside
    std::size_t block = offset / kBlock;
    while (block < last) {
        // Sixty-four plain blocks (4 KiB) at once where a word of them is all plain.
        if (block % 64 == 0 && last - block >= 64 && bits_[block / 64] == ~std::uint64_t{0}) {
            block += 64;
            continue;
        }
        if (!plain(block)) break;
        ++block;
    }
    return block * kBlock;
}

Result<TopLevelScan> scan_top_level_members(std::string_view text,
                                            std::span<const std::string_view> keys, int max_depth,
                                            const PlainBlocks* plain) {
    // (A text of another length is not the one noted: a body changed since it arrived.)
    if (plain != nullptr && plain->noted_bytes() != text.size()) plain = nullptr;
    return Scanner(text, keys, max_depth, plain).run();
}

Result<TopLevelScan> scan_top_level_member(std::string_view text, std::string_view key,
                                           int max_depth) {
    return scan_top_level_members(text, std::span<const std::string_view>(&key, 1), max_depth);
}

}  // namespace ensemble
