#include "worker/http_wire.h"

namespace ensemble {

namespace {

void append_version(std::string& out, unsigned version) {
    const char text[] = {'H', 'T',
                         'T', 'P',
                         '/', static_cast<char>('0' + version / 10),
                         '.', static_cast<char>('0' + version % 10)};
    out.append(text, sizeof text);
}

void append_fields(std::string& out, const http::fields& fields) {
    for (const auto& field : fields) {
        out.append(sv(field.name_string())).append(": ").append(sv(field.value())).append("\r\n");
    }
    out.append("\r\n");
}

}  // namespace

void append_wire_header(std::string& out, const http::request_header<>& header) {
    out.append(sv(header.method_string())).append(" ").append(sv(header.target())).append(" ");
    append_version(out, header.version());
    out.append("\r\n");
    append_fields(out, header);
}

void append_wire_header(std::string& out, const http::response_header<>& header) {
    append_version(out, header.version());
    const unsigned status = header.result_int();
    const char code[] = {' ', static_cast<char>('0' + status / 100 % 10),
                         static_cast<char>('0' + status / 10 % 10),
                         static_cast<char>('0' + status % 10), ' '};
    out.append(code, sizeof code).append(sv(header.reason())).append("\r\n");
    append_fields(out, header);
}

ChunkSizeLine::ChunkSizeLine(std::size_t size) {
    start_ = digits_.size() - 2;
    digits_[start_] = '\r';
    digits_[start_ + 1] = '\n';
    do {
        digits_[--start_] = "0123456789abcdef"[size % 16];
        size /= 16;
    } while (size > 0);
}

}  // namespace ensemble
