//! Listening sockets: bound here, adopted from systemd or a predecessor
//! later, and known by their config name.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog asked of the kernel; it caps this at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listening socket. `SO_REUSEADDR` so a restart does
/// not wait out TIME_WAIT; never `SO_REUSEPORT`, which would split the accept
/// queue between processes.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` takes IPv6 only, so `0.0.0.0` on the same port stays free.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
