//! Log output: human-readable lines by default, one JSON object per line
//! with `--log-format json`. `RUST_LOG` filters (default `info`).
//!
//! Lines never block the data path: they go through a bounded queue
//! ([`QUEUE_LINES`]) to a writer thread, and a line that finds the queue
//! full (stderr is a pipe nobody reads, a full disk) is dropped and counted
//! (`baton_log_lines_dropped_total`), like HAProxy's and Envoy's log rings.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines waiting for the writer at most; about 2-3 MiB of access lines.
pub const QUEUE_LINES: usize = 10_000;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the logger; keep the guard until the process ends (dropping it
/// writes out what is still queued).
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("baton-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
