#include "supervisor/control_client.h"

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <cstdlib>

#include "profiles/config.h"
#include "protocol/framing.h"

namespace ensemble {

std::string config_path(const std::string& config_option) {
    if (!config_option.empty()) return config_option;
    const char* env = std::getenv("ENSEMBLE_CONFIG");
    return env != nullptr ? env : "";
}

Result<std::filesystem::path> control_socket_path(const std::string& socket_option,
                                                  const std::string& config_option) {
    if (!socket_option.empty()) return std::filesystem::path(socket_option);
    if (const char* env = std::getenv("ENSEMBLE_SOCKET"); env != nullptr && *env != '\0')
        return std::filesystem::path(env);
    if (const auto config = config_path(config_option); !config.empty()) {
        auto dir = run_dir_of(config);
        if (!dir) return dir.error();
        return *dir / "control.sock";
    }
    return default_run_dir() / "control.sock";
}

Result<nlohmann::json> call_supervisor(const std::filesystem::path& socket_path,
                                       const protocol::ControlRequest& request) {
    namespace asio = boost::asio;
    if (auto fits = protocol::check_socket_path(socket_path.string()); !fits) return fits.error();
    asio::io_context io;
    asio::local::stream_protocol::socket socket(io);
    boost::system::error_code ec;
    socket.connect(asio::local::stream_protocol::endpoint(socket_path.string()), ec);
    if (ec == boost::system::errc::permission_denied) {
        return Error{"permission_denied",
                     "not allowed to reach ensembled at " + socket_path.string() +
                         ": its run folder and sockets are its own user's alone; run the CLI as "
                         "that user (or root)"};
    }
    if (ec && ec != boost::system::errc::no_such_file_or_directory &&
        ec != boost::system::errc::connection_refused) {
        return Error{"unreachable", "cannot connect to ensembled at " + socket_path.string() +
                                        ": " + ec.message()};
    }
    if (ec) {
        return Error{"not_running", "ensembled is not running (nothing listens on " +
                                        socket_path.string() + ": " + ec.message() +
                                        "); start it with 'ensembled --config FILE', or point "
                                        "at its socket with --socket or ENSEMBLE_SOCKET"};
    }
    const auto frame = protocol::encode_frame(protocol::to_json(request));
    asio::write(socket, asio::buffer(frame), ec);
    protocol::FrameDecoder decoder;
    std::array<char, 65536> buffer{};
    while (!ec) {
        const auto n = socket.read_some(asio::buffer(buffer), ec);
        decoder.feed({buffer.data(), n});
        if (auto reply = decoder.next()) {
            if (!*reply) return reply->error();
            return reply->value();
        }
    }
    return Error{"connection_lost",
                 "ensembled closed the connection before answering: " + ec.message()};
}

}  // namespace ensemble
