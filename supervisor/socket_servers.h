// The supervisor's two Unix sockets, in a private run directory (mode 0700, sockets 0600, and
// the peer's uid checked): control.sock takes the CLI's requests; workers.sock carries each
// worker's registration and heartbeats. Both read newline-delimited JSON (protocol/framing.h);
// a malformed message gets an error reply and the connection stays up.
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <filesystem>

#include "supervisor/control_api.h"
#include "supervisor/fleet.h"
#include "supervisor/front_door_keeper.h"

namespace ensemble {

using unix_socket = asio::local::stream_protocol;

// Creates `dir` (0700) and returns a listening socket at `dir/name` (0600). A live socket there
// means another ensembled runs: that is an error; a stale one is removed.
Result<std::unique_ptr<unix_socket::acceptor>> listen_unix(asio::io_context& io,
                                                           const std::filesystem::path& dir,
                                                           const std::string& name);

void serve_control(asio::io_context& io, unix_socket::acceptor& acceptor, ControlApi& api);
// Registrations that say they are the front door go to `front_door`, the rest to the fleet.
void serve_worker_links(asio::io_context& io, unix_socket::acceptor& acceptor, Fleet& fleet,
                        FrontDoorKeeper& front_door);

}  // namespace ensemble
