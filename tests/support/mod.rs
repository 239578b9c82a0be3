//! Test support: the real `baton` binary on real loopback sockets, backends
//! that say who they are, and polling helpers with deadlines.

#![allow(dead_code)]

pub mod exposition;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port nobody listens on right now, below the kernel's
/// ephemeral range (32768–60999 here), so that no client socket of a
/// parallel test can take it between this call and baton's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test binary starts somewhere else in the range.
    let offset = std::process::id() % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n * 7) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
}

/// A backend that writes `<name>\n` on every new connection, then echoes
/// every byte, and forwards the client's FIN as its own.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_with(name, true)
    }

    /// A backend that echoes without announcing itself.
    pub fn echo() -> Backend {
        Backend::start_with("echo", false)
    }

    /// A naming backend on a given address (such as 127.0.0.2:PORT).
    pub fn start_at(name: &str, addr: SocketAddr) -> Backend {
        Backend::serve(TcpListener::bind(addr).unwrap(), name, true)
    }

    fn start_with(name: &str, announce: bool) -> Backend {
        Backend::serve(TcpListener::bind("127.0.0.1:0").unwrap(), name, announce)
    }

    fn serve(listener: TcpListener, name: &str, announce: bool) -> Backend {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, n) = (accepted.clone(), stop.clone(), name.to_string());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                let n = n.clone();
                thread::spawn(move || {
                    if announce && stream.write_all(format!("{n}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => {
                                let _ = stream.shutdown(Shutdown::Write);
                                return;
                            }
                            Ok(k) => {
                                if stream.write_all(&buf[..k]).is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            accepted,
            stop,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag, then wait until the port
        // refuses: the listener is closed.
        let _ = TcpStream::connect(self.addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A running `baton run` process with its own folder and log file.
pub struct Baton {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    log_path: PathBuf,
}

impl Baton {
    /// Writes `config` (YAML) into a fresh folder, starts baton on it and
    /// waits for `/readyz`.
    pub fn start(config: &str) -> Baton {
        Baton::start_with(config, None)
    }

    /// As `start`, with `shell` (such as `ulimit -n 48`) run by `sh` first.
    pub fn start_with(config: &str, shell: Option<&str>) -> Baton {
        Baton::start_opts(config, shell, &[])
    }

    /// As `start_with`, with extra environment variables.
    pub fn start_opts(config: &str, shell: Option<&str>, env: &[(&str, &str)]) -> Baton {
        Baton::start_full(tempfile::tempdir().unwrap(), config, shell, env, None)
    }

    /// Starts in `dir`, which may already hold files the config names.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Baton {
        Baton::start_full(dir, config, None, &[], None)
    }

    /// As `start`, with stderr (the log) going to `stderr` instead of the
    /// log file.
    pub fn start_logging_to(config: &str, stderr: Stdio) -> Baton {
        Baton::start_full(
            tempfile::tempdir().unwrap(),
            config,
            None,
            &[],
            Some(stderr),
        )
    }

    fn start_full(
        dir: tempfile::TempDir,
        config: &str,
        shell: Option<&str>,
        env: &[(&str, &str)],
        stderr: Option<Stdio>,
    ) -> Baton {
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("baton.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let stderr = stderr.unwrap_or_else(|| log.try_clone().unwrap().into());
        let mut command = match shell {
            None => Command::new(BATON),
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(BATON);
                c
            }
        };
        command
            .args(["run", "-c"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .env("RUST_LOG", "info");
        command.envs(env.iter().copied());
        let child = command.spawn().unwrap();
        let admin = admin_of(config);
        let mut baton = Baton {
            child,
            dir,
            config_path,
            admin,
            log_path,
        };
        baton.wait_ready();
        baton
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "baton exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baton not ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "baton did not exit:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log holds `text`: lines reach the file from baton's
    /// log writer thread, a moment after what they tell.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the log never said {text:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").expect("admin answers");
        assert_eq!(status, 200);
        body
    }

    /// The value of one series, e.g. `baton_connections_active{listener="web"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// Runs `baton ARGS -c <this config>` and returns (success, stdout+stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BATON)
            .args(args)
            .arg("-c")
            .arg(&self.config_path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Replaces the config file (not yet reloaded).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_of(self.pid())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Baton {
    /// Stops the first process and every process of its lineage the test
    /// can still see: whichever serves this test's admin address now and
    /// the predecessors it lists as draining, by pid (a test that panics
    /// mid-upgrade must not leave successors holding ports for the rest of
    /// the suite).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for _ in 0..3 {
            let Ok((200, body)) = http_get(self.admin, "/status") else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let mut pids: Vec<i32> = v["draining"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["pid"].as_i64())
                .map(|p| p as i32)
                .collect();
            pids.extend(v["pid"].as_i64().map(|p| p as i32));
            for pid in pids.into_iter().filter(|&p| pid_alive(p)) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(2);
                while pid_alive(pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn admin_of(config: &str) -> SocketAddr {
    let value: serde_yaml::Value = serde_yaml::from_str(config).unwrap();
    value["admin"]["listen"].as_str().unwrap().parse().unwrap()
}

/// Finds `series` (name and labels exactly as exposed) in a text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Connects through baton and returns the stream and the name of the
/// backend that answered.
pub fn connect_named(addr: SocketAddr) -> (TcpStream, String) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (stream, line.trim_end().to_string())
}

/// A baseline config: one listener `web` on `listen`, one cluster `app`.
pub struct ConfigBuilder {
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub extra_top: String,
    pub listener_extra: String,
    pub cluster_extra: String,
    pub backends: Vec<(SocketAddr, u32)>,
}

impl ConfigBuilder {
    pub fn new(backends: &[&Backend]) -> ConfigBuilder {
        ConfigBuilder {
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            extra_top: String::new(),
            listener_extra: String::new(),
            cluster_extra: String::new(),
            backends: backends.iter().map(|b| (b.addr, 1)).collect(),
        }
    }

    pub fn yaml(&self) -> String {
        let mut backends = String::new();
        for (addr, weight) in &self.backends {
            backends.push_str(&format!(
                "      - {{ address: \"{addr}\", weight: {weight} }}\n"
            ));
        }
        format!(
            "admin:\n  listen: \"{admin}\"\ncontrol:\n  socket: baton.sock\npid_file: baton.pid\n{extra_top}\
             listeners:\n  - name: web\n    listen: \"{listen}\"\n    cluster: app\n{listener_extra}\
             clusters:\n  - name: app\n{cluster_extra}    backends:\n{backends}",
            admin = self.admin,
            listen = self.listen,
            extra_top = self.extra_top,
            listener_extra = self.listener_extra,
            cluster_extra = self.cluster_extra,
        )
    }
}

/// Runs `baton check` on `yaml` written into `dir` as config.yaml.
pub fn check(dir: &Path, yaml: &str) -> (bool, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BATON)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Client threads that run until stopped, collecting their errors.
#[derive(Default)]
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Workers {
    /// Runs `step` in a new thread until stopped; an error is recorded
    /// under `what` and the thread goes on.
    fn spawn(
        &mut self,
        what: String,
        mut step: impl FnMut(&AtomicBool) -> std::io::Result<()> + Send + 'static,
    ) {
        let (stop, errors) = (self.stop.clone(), self.errors.clone());
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = step(&stop) {
                    errors.lock().unwrap().push(format!("{what}: {e}"));
                }
            }
        }));
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.errors.lock().unwrap().clone()
    }
}

/// Steady traffic through baton: short connections (connect, read the
/// backend's name, echo, close) and long streams that echo and verify
/// chunks until stopped. Every failure is counted with its message.
pub struct Load {
    workers: Workers,
    pub short_done: Arc<AtomicUsize>,
    pub stream_bytes: Arc<AtomicUsize>,
}

impl Load {
    pub fn start(addr: SocketAddr, short_workers: usize, streams: usize) -> Load {
        let mut workers = Workers::default();
        let short_done = Arc::new(AtomicUsize::new(0));
        let stream_bytes = Arc::new(AtomicUsize::new(0));
        for _ in 0..short_workers {
            let done = short_done.clone();
            workers.spawn("short".into(), move |_| {
                short_exchange(addr)?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
        }
        for id in 0..streams {
            let bytes = stream_bytes.clone();
            // One stream per thread, kept open until stopped.
            workers.spawn(format!("stream {id}"), move |stop| {
                long_stream(addr, id as u8, stop, &bytes)
            });
        }
        Load {
            workers,
            short_done,
            stream_bytes,
        }
    }

    /// Stops every worker and returns the errors seen.
    pub fn finish(self) -> Vec<String> {
        self.workers.finish()
    }
}

fn short_exchange(addr: SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut name = String::new();
    reader.read_line(&mut name)?;
    if name.is_empty() {
        return Err(std::io::Error::other("closed before the backend spoke"));
    }
    (&stream).write_all(b"ping")?;
    let mut pong = [0u8; 4];
    reader.read_exact(&mut pong)?;
    if &pong != b"ping" {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

fn long_stream(
    addr: SocketAddr,
    id: u8,
    stop: &AtomicBool,
    bytes: &AtomicUsize,
) -> std::io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut name = String::new();
    reader.read_line(&mut name)?;
    let mut round: u32 = 0;
    let mut back = vec![0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        let chunk: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(31) ^ round ^ u32::from(id)) as u8)
            .collect();
        (&stream).write_all(&chunk)?;
        reader.read_exact(&mut back)?;
        if back != chunk {
            return Err(std::io::Error::other(format!(
                "round {round}: bytes differ"
            )));
        }
        bytes.fetch_add(chunk.len(), Ordering::Relaxed);
        round += 1;
        thread::sleep(Duration::from_millis(5));
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(std::io::Error::other("unexpected bytes after FIN"));
    }
    Ok(())
}

/// A small HTTP/1.1 backend with keep-alive: every request gets `ok`.
pub struct HttpBackend {
    pub addr: SocketAddr,
}

impl HttpBackend {
    pub fn start() -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        // Request line and headers, up to the blank line.
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HttpBackend { addr }
    }
}

/// HTTP keep-alive clients: each sends `per_connection` requests on one
/// connection, then opens a new one, until stopped; every failure counts.
pub struct KeepAlive {
    workers: Workers,
    pub requests: Arc<AtomicUsize>,
}

impl KeepAlive {
    pub fn start(addr: SocketAddr, workers: usize, per_connection: usize) -> KeepAlive {
        let mut pool = Workers::default();
        let requests = Arc::new(AtomicUsize::new(0));
        for _ in 0..workers {
            let requests = requests.clone();
            pool.spawn("keep-alive".into(), move |_| {
                keep_alive_session(addr, per_connection, &requests)
            });
        }
        KeepAlive {
            workers: pool,
            requests,
        }
    }

    pub fn finish(self) -> Vec<String> {
        self.workers.finish()
    }
}

fn keep_alive_session(addr: SocketAddr, n: usize, done: &AtomicUsize) -> std::io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    for _ in 0..n {
        (&stream).write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
        let mut line = String::new();
        let mut length = None;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("closed mid-response"));
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                length = v.trim().parse::<usize>().ok();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length.unwrap_or(0)];
        reader.read_exact(&mut body)?;
        if body != b"ok" {
            return Err(std::io::Error::other("short body"));
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The pid of the process that serves admin now, from /status.
pub fn serving_pid(admin: SocketAddr) -> Option<i32> {
    let (code, body) = http_get(admin, "/status").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

/// Waits until a process other than `old` serves admin, and returns it.
pub fn wait_new_pid(baton: &Baton, old: i32) -> i32 {
    let mut new = old;
    wait_until(
        Duration::from_secs(20),
        "a successor serving admin",
        || match serving_pid(baton.admin) {
            Some(p) if p != old => {
                new = p;
                true
            }
            _ => false,
        },
    );
    new
}

/// Resident memory of `pid` in KiB (0 once it is gone).
pub fn rss_of(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
pub struct Notify {
    socket: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notify {
    pub fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Notify {
            socket,
            path,
            _dir: dir,
        }
    }

    /// A baton whose environment names this socket.
    pub fn start_baton(&self, config: &str) -> Baton {
        Baton::start_opts(
            config,
            None,
            &[("NOTIFY_SOCKET", self.path.to_str().unwrap())],
        )
    }

    /// The next message, waiting up to 10 s.
    pub fn recv(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
}

/// Whether the peer closed `s` (end of stream, or a reset): a read that
/// times out means it is still open — the difference `unwrap_or(0)` hides.
pub fn closed_by_peer(s: &mut impl Read) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
    }
}

/// The `lifecycle` that `baton status` shows (`ready`, `reloading`,
/// `upgrading (…)`, …), or empty if nobody answers.
pub fn lifecycle(baton: &Baton) -> String {
    let (ok, out) = baton.ctl(&["status", "--json"]);
    if !ok {
        return String::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["lifecycle"].as_str().unwrap_or("").to_string()
}

/// A `BATON_HOSTS_FILE` that is a FIFO: a lookup of a pinned name blocks
/// until `release`, which makes a reload as slow as a test needs.
pub struct SlowHosts {
    pub path: PathBuf,
    line: String,
}

impl SlowHosts {
    /// `line` is the hosts line the lookup reads, e.g. `127.0.0.1 slow.test`.
    pub fn new(dir: &Path, line: &str) -> SlowHosts {
        let path = dir.join("hosts");
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo");
        SlowHosts {
            path,
            line: format!("{line}\n"),
        }
    }

    pub fn env(&self) -> (&'static str, &str) {
        ("BATON_HOSTS_FILE", self.path.to_str().unwrap())
    }

    /// Answers the blocked lookup, and makes every later lookup read a plain
    /// file with the same line.
    pub fn release(&self) {
        let plain = self.path.with_extension("plain");
        std::fs::write(&plain, &self.line).unwrap();
        // Opening the write end waits for the blocked reader.
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        std::fs::rename(&plain, &self.path).unwrap();
        fifo.write_all(self.line.as_bytes()).unwrap();
    }
}

/// Sends SIGTERM to `pid` (a process this test started, directly or as a
/// successor) and waits until it is gone.
pub fn stop_pid(pid: i32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    wait_until(Duration::from_secs(20), "process stops", || !pid_alive(pid));
}

/// A ClientHello naming `name`, padded with an extension of `pad` bytes.
pub fn client_hello(name: &str, pad: usize) -> Vec<u8> {
    let n = name.len();
    let mut ext = Vec::new();
    ext.extend_from_slice(&0u16.to_be_bytes());
    ext.extend_from_slice(&((n + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((n + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(n as u16).to_be_bytes());
    ext.extend_from_slice(name.as_bytes());
    ext.extend_from_slice(&21u16.to_be_bytes());
    ext.extend_from_slice(&(pad as u16).to_be_bytes());
    ext.extend(std::iter::repeat_n(0u8, pad));
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = vec![0x16, 3, 1];
    out.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    out.extend_from_slice(&hs);
    out
}

impl ConfigBuilder {
    /// This config plus a listener `http` on a free port in front of
    /// `backend` (cluster `web_app`): the YAML and the listener's address.
    pub fn with_http_listener(&self, backend: &HttpBackend) -> (String, SocketAddr) {
        let port = free_port();
        let yaml = self.with_more(
            &format!("  - {{ name: http, listen: \"127.0.0.1:{port}\", cluster: web_app }}\n"),
            &format!(
                "  - name: web_app\n    backends: [ {{ address: \"{}\" }} ]\n",
                backend.addr
            ),
        );
        (yaml, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// This config with more `listeners` (after `web`) and more `clusters`
    /// (before `app`), each given as YAML list items.
    pub fn with_more(&self, listeners: &str, clusters: &str) -> String {
        self.yaml()
            .replace("clusters:\n", &format!("{listeners}clusters:\n{clusters}"))
    }
}

/// Sockets `pid` holds (entries of /proc/PID/fd that are sockets).
pub fn sockets_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// What a [`CheckTarget`] answers to the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Reads the request and never answers (until the client goes).
    Hang,
    /// Closes as soon as the request is read.
    Close,
}

/// A byte stream a [`CheckTarget`] talks HTTP over (plain TCP or TLS).
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// An HTTP server for health checks whose answer the test switches, and
/// which records each request's head.
pub struct CheckTarget {
    pub addr: SocketAddr,
    answer: Arc<std::sync::Mutex<Answer>>,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CheckTarget {
    pub fn start() -> CheckTarget {
        CheckTarget::start_wrapped(|tcp| Some(Box::new(tcp)))
    }

    /// `wrap` turns each accepted connection into the stream to talk over
    /// (a TLS server side, say); `None` drops it.
    pub fn start_wrapped(
        wrap: impl Fn(TcpStream) -> Option<Box<dyn Conn>> + Send + Sync + 'static,
    ) -> CheckTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(std::sync::Mutex::new(Answer::Status(200)));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (answer_in, requests_in) = (answer.clone(), requests.clone());
        let wrap = Arc::new(wrap);
        thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (answer, requests, wrap) =
                    (answer_in.clone(), requests_in.clone(), wrap.clone());
                thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    let Some(mut conn) = wrap(tcp) else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let now = *answer.lock().unwrap();
                    match now {
                        Answer::Status(code) => {
                            let _ = conn.write_all(
                                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                    .as_bytes(),
                            );
                            let _ = conn.flush();
                        }
                        Answer::Hang => {
                            // Until the checker gives up and closes.
                            let _ = conn.read(&mut buf);
                        }
                        Answer::Close => {}
                    }
                });
            }
        });
        CheckTarget {
            addr,
            answer,
            requests,
        }
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// The names of the backends that answer `n` connections to `addr`.
pub fn answering(addr: SocketAddr, n: usize) -> std::collections::HashSet<String> {
    (0..n).map(|_| connect_named(addr).1).collect()
}

pub fn names(set: &[&str]) -> std::collections::HashSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

/// An echo backend on the calling tokio runtime (for baton run in-process).
pub async fn tokio_echo_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// baton run in-process (`baton::run`) on the calling tokio runtime with
/// `yaml` written into `dir`, signals off; cancel the token to stop it.
pub fn run_in_process(
    dir: &Path,
    yaml: &str,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio_util::sync::CancellationToken,
) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = baton::config::Config::load(&path).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let options = baton::app::RunOptions {
        exe: PathBuf::from(BATON),
        log_format: baton::logging::LogFormat::Human,
        signals: false,
    };
    let run = tokio::spawn(baton::run(
        config,
        baton::app::Start::Fresh(baton::upgrade::Inherited::default()),
        options,
        shutdown.clone(),
    ));
    (run, shutdown)
}
