//! The listener registry: every socket this process accepts on, by name —
//! the proxy listeners, `admin` and `control`. It binds or adopts them,
//! runs their accept loops, pauses and resumes those loops around a
//! hand-over, duplicates the sockets for a successor and closes them.
//!
//! Our own handle on each socket outlives its accept loop, so an upgrade
//! can pause accepting, and resume on the same kernel socket if the
//! successor dies before it confirmed the take-over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminContext;
use crate::config::Config;
use crate::control;
use crate::proxy::Proxy;
use crate::proxy::listener::bind;
use crate::proxy::serve::AcceptLoop;
use crate::upgrade::Inherited;

pub use crate::upgrade::{ADMIN_SOCKET_NAME as ADMIN, CONTROL_SOCKET_NAME as CONTROL};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("control.socket: {0}")]
    Control(#[from] control::ControlError),
    #[error("listener {name}: {source}")]
    Socket {
        name: String,
        source: std::io::Error,
    },
}

struct Listener {
    addr: SocketAddr,
    /// Ours; the accept loop holds a duplicate.
    socket: std::net::TcpListener,
    accepting: Option<AcceptHandle>,
    /// Connections held, across reloads (for `max_connections`).
    active: Arc<AtomicUsize>,
}

struct AcceptHandle {
    stop: CancellationToken,
    /// Set before `stop` fires: leave queued connections to whoever shares
    /// the socket instead of serving them.
    leave_queue: Arc<AtomicBool>,
}

impl AcceptHandle {
    /// Closing our fd never affects another process sharing the socket
    /// (no `shutdown(2)`).
    fn stop(self, leave_queue: bool) {
        self.leave_queue.store(leave_queue, Ordering::Release);
        self.stop.cancel();
    }
}

/// A server (admin or control) on a socket we keep.
struct Server<S> {
    socket: S,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

pub struct Registry {
    proxy: Arc<Proxy>,
    listeners: HashMap<String, Listener>,
    admin: Option<Server<std::net::TcpListener>>,
    control: Option<Server<std::os::unix::net::UnixListener>>,
}

/// Proxy listener sockets by name.
pub type NamedSockets = Vec<(String, std::net::TcpListener)>;

impl Registry {
    pub fn new(proxy: Arc<Proxy>) -> Registry {
        Registry {
            proxy,
            listeners: HashMap::new(),
            admin: None,
            control: None,
        }
    }

    /// Every proxy listener and the admin listener of `config`: the
    /// inherited socket of the same name and address, or a new bind.
    /// Nothing is kept on error (the sockets close).
    pub fn adopt_or_bind(
        config: &Config,
        inherited: &mut Inherited,
    ) -> Result<(NamedSockets, std::net::TcpListener), RegistryError> {
        let mut bound = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            let socket = match inherited.take_tcp(&l.name, l.listen) {
                Some(s) => s,
                None => bind(l.listen).map_err(|source| RegistryError::Bind {
                    key: format!("listeners[{i}] ({}).listen", l.name),
                    addr: l.listen,
                    source,
                })?,
            };
            bound.push((l.name.clone(), socket));
        }
        let admin = match inherited.take_tcp(ADMIN, config.admin_listen) {
            Some(s) => s,
            None => bind(config.admin_listen).map_err(|source| RegistryError::Bind {
                key: "admin.listen".into(),
                addr: config.admin_listen,
                source,
            })?,
        };
        Ok((bound, admin))
    }

    /// Starts accepting on `socket` as listener `name`; a listener of that
    /// name already running stops (a rename or move).
    pub fn start(
        &mut self,
        name: &str,
        socket: std::net::TcpListener,
    ) -> Result<(), RegistryError> {
        let err = |source| RegistryError::Socket {
            name: name.to_string(),
            source,
        };
        let addr = socket.local_addr().map_err(err)?;
        let active = self
            .listeners
            .get(name)
            .map_or_else(Default::default, |l| l.active.clone());
        let accepting = self.spawn_accept(name, &socket, &active).map_err(err)?;
        let old = self.listeners.insert(
            name.to_string(),
            Listener {
                addr,
                socket,
                accepting: Some(accepting),
                active,
            },
        );
        if let Some(old) = old.and_then(|l| l.accepting) {
            old.stop(false);
        }
        tracing::info!(listener = name, %addr, "listening");
        Ok(())
    }

    fn spawn_accept(
        &self,
        name: &str,
        socket: &std::net::TcpListener,
        active: &Arc<AtomicUsize>,
    ) -> std::io::Result<AcceptHandle> {
        // Accepted sockets inherit TCP_NODELAY from their listener: set
        // once here (on bound, inherited and systemd sockets alike), not
        // once per connection.
        socket2::SockRef::from(socket).set_tcp_nodelay(true)?;
        let listener = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
        let stop = self.proxy.drain.accepting().child_token();
        let leave_queue = Arc::new(AtomicBool::new(false));
        let accept = AcceptLoop {
            name: name.into(),
            proxy: self.proxy.clone(),
            metrics: self.proxy.metrics.listener(name),
            active: active.clone(),
        };
        tokio::spawn(accept.run(listener, stop.clone(), leave_queue.clone()));
        Ok(AcceptHandle { stop, leave_queue })
    }

    /// Stops listener `name` and closes our socket. With `leave_queue`, a
    /// loop that shares the socket serves what is queued.
    pub fn remove(&mut self, name: &str, leave_queue: bool) {
        if let Some(accepting) = self.listeners.remove(name).and_then(|l| l.accepting) {
            accepting.stop(leave_queue);
        }
    }

    /// A duplicate of listener `name`'s socket (a rename shares it).
    pub fn share(&self, name: &str) -> Option<std::io::Result<std::net::TcpListener>> {
        self.listeners.get(name).map(|l| l.socket.try_clone())
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).map(|l| l.addr)
    }

    /// Listener `name`'s connection count (for `max_connections`), shared
    /// with its accept loop; a new one if there is no such listener.
    pub fn active_counter(&self, name: &str) -> Arc<AtomicUsize> {
        self.listeners
            .get(name)
            .map_or_else(Default::default, |l| l.active.clone())
    }

    pub fn active(&self, name: &str) -> usize {
        self.listeners
            .get(name)
            .map_or(0, |l| l.active.load(Ordering::Relaxed))
    }

    /// Stops every accept loop but keeps our sockets: the successor accepts
    /// from the same kernel sockets, and `resume` can take over again.
    pub fn pause(&mut self) {
        for l in self.listeners.values_mut() {
            if let Some(a) = l.accepting.take() {
                a.stop(true);
            }
        }
    }

    /// Accepts again on every paused listener. A listener that cannot be
    /// resumed is logged; the others still are.
    pub fn resume(&mut self) {
        let names: Vec<String> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.accepting.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let l = &self.listeners[&name];
            match self.spawn_accept(&name, &l.socket, &l.active) {
                Ok(a) => {
                    if let Some(l) = self.listeners.get_mut(&name) {
                        l.accepting = Some(a);
                    }
                }
                Err(e) => tracing::error!(listener = name, error = %e, "cannot accept again"),
            }
        }
    }

    /// Stops every proxy listener and closes its socket (a stop: admin and
    /// control keep answering while we drain). Queued connections are
    /// served.
    pub fn close_listeners(&mut self) {
        for (_, l) in self.listeners.drain() {
            if let Some(a) = l.accepting {
                a.stop(false);
            }
        }
    }

    /// Stops every accept loop and closes every socket this process holds
    /// (the successor owns them now, or we stop). With `leave_queue`,
    /// queued connections are left to the other process.
    pub fn close(&mut self, leave_queue: bool) -> Option<JoinHandle<()>> {
        for (_, l) in self.listeners.drain() {
            if let Some(a) = l.accepting {
                a.stop(leave_queue);
            }
        }
        self.stop_control();
        self.control = None;
        let admin = self.stop_admin();
        self.admin = None;
        admin
    }

    /// Duplicates of every socket, by name, for a successor.
    pub fn duplicate(&self) -> Vec<(String, OwnedFd)> {
        let mut out = Vec::new();
        for (name, l) in &self.listeners {
            match l.socket.as_fd().try_clone_to_owned() {
                Ok(fd) => out.push((name.clone(), fd)),
                Err(e) => tracing::warn!(listener = name, error = %e, "cannot duplicate"),
            }
        }
        if let Some(admin) = &self.admin
            && let Ok(fd) = admin.socket.as_fd().try_clone_to_owned()
        {
            out.push((ADMIN.to_string(), fd));
        }
        if let Some(control) = &self.control
            && let Ok(fd) = control.socket.as_fd().try_clone_to_owned()
        {
            out.push((CONTROL.to_string(), fd));
        }
        out
    }

    /// Keeps the admin socket (not served until `serve_admin`).
    pub fn set_admin(&mut self, socket: std::net::TcpListener) {
        if let Some(old) = self.stop_admin() {
            drop(old);
        }
        self.admin = Some(Server {
            socket,
            running: None,
        });
    }

    pub fn set_control(&mut self, socket: std::os::unix::net::UnixListener) {
        self.stop_control();
        self.control = Some(Server {
            socket,
            running: None,
        });
    }

    pub fn has_control(&self) -> bool {
        self.control.is_some()
    }

    /// Serves admin on the kept socket.
    pub fn serve_admin(&mut self, context: AdminContext) -> std::io::Result<()> {
        let Some(admin) = self.admin.as_mut() else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::from_std(admin.socket.try_clone()?)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::admin::serve(listener, context, stop.clone()));
        if let Some((old, _)) = admin.running.replace((stop, task)) {
            old.cancel();
        }
        tracing::info!(addr = ?admin.socket.local_addr().ok(), "admin listening");
        Ok(())
    }

    /// Stops serving admin; the returned task ends once open requests are
    /// answered and idle connections closed.
    pub fn stop_admin(&mut self) -> Option<JoinHandle<()>> {
        let (stop, task) = self.admin.as_mut()?.running.take()?;
        stop.cancel();
        Some(task)
    }

    /// Answers the control socket: every request becomes a message to `to`.
    pub fn serve_control(&mut self, to: mpsc::Sender<control::Message>) -> std::io::Result<()> {
        let Some(control) = self.control.as_mut() else {
            return Ok(());
        };
        let listener = tokio::net::UnixListener::from_std(control.socket.try_clone()?)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(control::serve(listener, to, stop.clone()));
        if let Some((old, _)) = control.running.replace((stop, task)) {
            old.cancel();
        }
        Ok(())
    }

    /// Stops answering new control connections (open ones finish).
    pub fn stop_control(&mut self) {
        if let Some((stop, _)) = self.control.as_mut().and_then(|c| c.running.take()) {
            stop.cancel();
        }
    }
}
