#include "worker/http_wire.h"

#include <algorithm>
#include <cassert>
#include <vector>

namespace ensemble {

namespace {

// Room for a usual header in one allocation.
constexpr std::size_t kHeaderReserve = 512;

void append_version(std::string& out, unsigned version) {
    const char text[] = {'H', 'T',
                         'T', 'P',
                         '/', static_cast<char>('0' + version / 10),
                         '.', static_cast<char>('0' + version % 10)};
    out.append(text, sizeof text);
}

void append_field(std::string& out, const http::fields::value_type& field) {
    out.append(sv(field.name_string())).append(": ").append(sv(field.value())).append("\r\n");
}

void append_fields(std::string& out, const http::fields& fields) {
    for (const auto& field : fields)
        append_field(out, field);
    out.append("\r\n");
}

// Whether a Transfer-Encoding value's last coding is chunked.
bool ends_with_chunked(std::string_view codings) {
    const auto end = codings.find_last_not_of(" \t");
    if (end == std::string_view::npos) return false;
    const auto start = codings.find_last_of(", \t", end) + 1;  // npos + 1 == 0
    const auto last = codings.substr(start, end + 1 - start);
    constexpr std::string_view kChunked = "chunked";
    return last.size() == kChunked.size() &&
           std::equal(last.begin(), last.end(), kChunked.begin(),
                      [](char c, char lower) { return (c | 0x20) == lower; });  // any case
}

void append_request_line(std::string& out, unsigned version, const http::request_header<>& header) {
    out.append(sv(header.method_string())).append(" ").append(sv(header.target())).append(" ");
    append_version(out, version);
    out.append("\r\n");
}

void append_status_line(std::string& out, unsigned version, const http::response_header<>& header) {
    append_version(out, version);
    const unsigned status = header.result_int();
    const char code[] = {' ', static_cast<char>('0' + status / 100 % 10),
                         static_cast<char>('0' + status / 10 % 10),
                         static_cast<char>('0' + status % 10), ' '};
    out.append(code, sizeof code).append(sv(header.reason())).append("\r\n");
}

// The fields a message's Connection header names as its connection's own (RFC 9110 7.6.1:
// "Connection: X-Hop" makes X-Hop hop-by-hop), which a proxy removes as it does the fixed ones.
// The usual options, close and keep-alive, name no field: a usual message costs one pass over
// its fields and no allocation. Kept sorted, so that a header naming thousands of fields costs
// a search per field, not a scan.
class ConnectionOptions {
  public:
    explicit ConnectionOptions(const http::fields& fields) {
        for (const auto& field : fields) {
            if (field.name() != http::field::connection) continue;
            // Split on commas by hand: Beast's token_list stops at the first malformed element,
            // and the names after it would pass.
            std::string_view rest = sv(field.value());
            while (!rest.empty()) {
                const auto comma = rest.find(',');
                auto name = rest.substr(0, comma);
                rest =
                    comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
                const auto first = name.find_first_not_of(" \t");
                if (first == std::string_view::npos) continue;
                name = name.substr(first, name.find_last_not_of(" \t") + 1 - first);
                if (!beast::iequals(beast::string_view(name.data(), name.size()), "close") &&
                    !beast::iequals(beast::string_view(name.data(), name.size()), "keep-alive"))
                    named_.push_back(name);
            }
        }
        if (named_.size() > 1) std::sort(named_.begin(), named_.end(), less);
    }

    bool name(const http::fields::value_type& field) const {
        return !named_.empty() &&
               std::binary_search(named_.begin(), named_.end(), sv(field.name_string()), less);
    }

  private:
    // Field names compare without regard to case (RFC 9110 5.1).
    static bool less(std::string_view a, std::string_view b) {
        const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c + ('a' - 'A')) : c; };
        return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                            [&](char x, char y) { return lower(x) < lower(y); });
    }

    std::vector<std::string_view> named_;
};

}  // namespace

void append_wire_header(std::string& out, const http::request_header<>& header) {
    append_request_line(out, header.version(), header);
    append_fields(out, header);
}

void append_wire_header(std::string& out, const http::response_header<>& header) {
    append_status_line(out, header.version(), header);
    append_fields(out, header);
}

bool is_hop_by_hop(http::field field) {
    switch (field) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_connection:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::upgrade:
            return true;
        default:
            return false;
    }
}

std::string relayed_header(const http::response_header<>& engine, BodyFraming framing,
                           bool keep_alive) {
    assert(framing != BodyFraming::until_close || !keep_alive);
    const bool chunked = framing == BodyFraming::chunked;
    std::string out;
    out.reserve(kHeaderReserve);
    append_status_line(out, 11, engine);
    std::string_view codings;  // the engine's transfer codings
    const ConnectionOptions connection_own(engine);
    for (const auto& field : engine) {
        const auto name = field.name();
        if (name == http::field::transfer_encoding) codings = sv(field.value());
        // (An engine's Connection never takes away the length the client needs.)
        const bool named_away = connection_own.name(field) && name != http::field::content_length;
        const bool dropped =
            is_hop_by_hop(name) || named_away || name == http::field::server ||
            (framing != BodyFraming::as_engine && name == http::field::content_length);
        if (!dropped) append_field(out, field);
    }
    out.append("Server: ensemble-worker\r\n");
    if (chunked) {
        // Codings other than chunked (gzip, say) stay on the bytes, which are relayed as they
        // came: the client must still be told of them.
        out.append("Transfer-Encoding: ");
        if (codings.empty()) {
            out.append("chunked");
        } else {
            out.append(codings);
            if (!ends_with_chunked(codings)) out.append(", chunked");
        }
        out.append("\r\n");
    }
    if (!keep_alive) out.append("Connection: close\r\n");
    out.append("\r\n");
    return out;
}

std::string forwarded_header(const http::request_header<>& client, std::string_view host,
                             std::size_t body_size, bool keep_authorization) {
    std::string out;
    out.reserve(kHeaderReserve);
    append_request_line(out, 11, client);
    const ConnectionOptions connection_own(client);
    for (const auto& field : client) {
        const auto name = field.name();
        const bool dropped = is_hop_by_hop(name) || connection_own.name(field) ||
                             name == http::field::host || name == http::field::content_length ||
                             name == http::field::expect ||
                             name == http::field::proxy_authorization ||
                             (name == http::field::authorization && !keep_authorization);
        if (!dropped) append_field(out, field);
    }
    out.append("Host: ").append(host).append("\r\n");
    const auto method = client.method();
    if (body_size > 0 || method == http::verb::post || method == http::verb::put ||
        method == http::verb::options) {
        out.append("Content-Length: ").append(std::to_string(body_size)).append("\r\n");
    }
    out.append("\r\n");
    return out;
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
