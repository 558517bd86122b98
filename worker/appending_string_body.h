// A request body read into a std::string like Beast's string_body, but appended to: Beast's own
// reader resizes the string (zero-filling it) before it copies each part in, which measured 7 %
// of the worker's CPU on a 1 MB body (issue 14). Only for reading; the message is handed on as an
// http::request<http::string_body> (to_string_body).
#pragma once

#include <cstdint>
#include <string>

#include "os/asio.h"

namespace ensemble {

struct AppendingStringBody {
    using value_type = std::string;

    static std::uint64_t size(const value_type& body) { return body.size(); }

    class reader {
      public:
        template <bool isRequest, class Fields>
        reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

        void init(const boost::optional<std::uint64_t>& length, boost::system::error_code& ec) {
            // (The parser's body limit has been checked against a declared length already.)
            if (length) body_.reserve(static_cast<std::size_t>(*length));
            ec = {};
        }

        template <class ConstBufferSequence>
        std::size_t put(const ConstBufferSequence& buffers, boost::system::error_code& ec) {
            std::size_t appended = 0;
            for (const auto part : beast::buffers_range_ref(buffers)) {
                body_.append(static_cast<const char*>(part.data()), part.size());
                appended += part.size();
            }
            ec = {};
            return appended;
        }

        void finish(boost::system::error_code& ec) { ec = {}; }

      private:
        value_type& body_;
    };
};

// The same message with Beast's string_body, the type the rest of the worker handles (both
// bodies are a std::string: nothing is copied).
inline http::request<http::string_body> to_string_body(http::request<AppendingStringBody>&& read) {
    return http::request<http::string_body>(std::move(read.base()), std::move(read.body()));
}

}  // namespace ensemble
