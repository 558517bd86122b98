// Beast's HTTP message types under Ensemble's short names, without the event loop (os/asio.h):
// what code that only builds or reads messages needs (and all that the fuzz build compiles).
#pragma once

#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>
#include <string_view>

namespace ensemble {

namespace beast = boost::beast;
namespace http = boost::beast::http;

// Beast's string_view is boost::string_view before Boost 1.81 and std::string_view after.
template <typename View>
std::string_view sv(const View& view) {
    return {view.data(), view.size()};
}

}  // namespace ensemble
