//! Listening sockets that arrive from outside instead of being bound: from
//! systemd (socket activation, `LISTEN_FDS`/`LISTEN_FDNAMES`) on first start,
//! adopted by name.

pub mod fds;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Sockets handed to this process, by name, until adopted.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<String, OwnedFd>,
}

impl Inherited {
    /// The sockets systemd passed (none unless `LISTEN_PID` is our pid). The
    /// variables are read once; a child we spawn does not see them.
    pub fn from_systemd() -> Inherited {
        let fds = match sd_notify::listen_fds_with_names() {
            Ok(fds) => fds.collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed LISTEN_FDS/LISTEN_FDNAMES");
                Vec::new()
            }
        };
        let mut sockets = HashMap::new();
        for (fd, name) in fds {
            let owned = fds::adopt_listen_fd(fd);
            if sockets.insert(name.clone(), owned).is_some() {
                tracing::warn!(
                    name,
                    "systemd passed two sockets with one name; keeping the last"
                );
            }
        }
        if !sockets.is_empty() {
            tracing::info!(names = ?sockets.keys().collect::<Vec<_>>(), "sockets from systemd");
        }
        Inherited { sockets }
    }

    /// The listening TCP socket named `name`, if one was passed and listens
    /// on `addr`; set non-blocking. A socket under that name on another
    /// address is closed (the config wins) and `None` returned.
    pub fn take_tcp(&mut self, name: &str, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.sockets.remove(name)?;
        let listener = std::net::TcpListener::from(fd);
        match listener.local_addr() {
            Ok(local) if same_address(local, addr) => {}
            Ok(local) => {
                tracing::warn!(name, passed = %local, configured = %addr, "inherited socket listens elsewhere; binding the configured address");
                return None;
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "inherited descriptor is not a TCP socket; ignoring it");
                return None;
            }
        }
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::warn!(name, error = %e, "cannot make inherited socket non-blocking; ignoring it");
            return None;
        }
        tracing::info!(name, %addr, "adopted an inherited listening socket");
        Some(listener)
    }

    /// Closes what no listener adopted.
    pub fn close_rest(&mut self) {
        for (name, _) in self.sockets.drain() {
            tracing::warn!(name, "closing an inherited socket no listener names");
        }
    }
}

/// Port 0 in the config means "any port": a passed socket on any port fits.
fn same_address(local: SocketAddr, configured: SocketAddr) -> bool {
    local.ip() == configured.ip() && (configured.port() == 0 || local.port() == configured.port())
}
