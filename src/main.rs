//! The `baton` command line: parse, then hand over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use baton::app::{RunOptions, Start};
use baton::config::{self, Config};
use baton::control::{self, Command as ControlCommand};
use baton::logging::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "A TCP/TLS reverse proxy and load balancer you can reload and upgrade while it serves"
)]
struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "config.yaml"
    )]
    config: PathBuf,
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Talk to this control socket instead of the config's `control.socket`.
    #[arg(long, global = true)]
    control_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (the default command).
    Run {
        /// Start as the successor of the running baton: take its listeners
        /// over the control socket instead of binding them.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config: exit 0 if valid, 1 with every error if not.
    Check {
        /// `text` (one line per problem, as editors jump to them) or `json`
        /// (an array of {severity, file, line, column, path, message}).
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Ask the running baton to reload its config; exit 0 once it is live.
    Reload {
        /// Print what would change without applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hand the running baton's sockets to a new process of BINARY (default:
    /// the path it was started from); exit 0 only if the new one took over.
    Upgrade {
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Show the running baton's listeners, clusters, backends and drains.
    Status {
        /// Print the JSON that /status serves.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check { format } => check(&cli.config, format),
        Command::Run { upgrade } => run(&cli.config, cli.log_format, upgrade),
        Command::Upgrade { binary } => upgrade(&socket(&cli.config, cli.control_socket), binary),
        Command::Reload { dry_run } => reload(&socket(&cli.config, cli.control_socket), dry_run),
        Command::Status { json } => status(&socket(&cli.config, cli.control_socket), json),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

fn check(path: &Path, format: CheckFormat) -> ExitCode {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (config, errors, warnings) = match Config::load(path) {
        Ok(mut config) => {
            let warnings = std::mem::take(&mut config.warnings);
            (Some(config), Vec::new(), warnings)
        }
        Err(e) => (None, e.problems, e.warnings),
    };
    if format == CheckFormat::Json {
        let all: Vec<serde_json::Value> = errors
            .iter()
            .map(|p| p.to_json("error", &absolute))
            .chain(warnings.iter().map(|p| p.to_json("warning", &absolute)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("JSON values serialize")
        );
    } else {
        for e in &errors {
            eprintln!("{}", e.display(&absolute));
        }
        for w in &warnings {
            eprintln!("warning: {}", w.display(&absolute));
        }
        match &config {
            Some(config) => println!("{}: ok: {}", absolute.display(), config.summary()),
            None => eprintln!("{} error(s), {} warning(s)", errors.len(), warnings.len()),
        }
    }
    if config.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One worker per core, or `TOKIO_WORKER_THREADS`. With one worker, the
/// current-thread scheduler: every task on one thread, none of the
/// multi-thread scheduler's hand-offs between threads, and the process's
/// own tasks on the same thread as its connections (the multi-thread
/// scheduler would run them on a second one).
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 1 {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        // A look at the sockets every 16 task polls, not tokio's 61: under
        // a flood of new connections, a backend's answer waited behind up
        // to 61 other tasks before its stream even learned of it (the
        // new-connection p99 went from about 1.5x HAProxy's to about 1.2x,
        // same CPU; BENCHMARKS.md, 3 December).
        builder.event_interval(16);
        builder
    } else {
        // Reads TOKIO_WORKER_THREADS itself.
        tokio::runtime::Builder::new_multi_thread()
    }
}

fn run(path: &Path, log_format: LogFormat, upgrade: bool) -> ExitCode {
    // Held to the end: dropping it writes out the lines still queued.
    let _log = logging::init(log_format);
    let runtime = match runtime_builder().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            if upgrade {
                // Tell the running baton why, so it rolls back at once.
                if let Ok(socket) = config::control_socket_of(path) {
                    let _ = runtime.block_on(baton::upgrade::successor::report_config_error(
                        &socket,
                        e.to_string(),
                    ));
                }
            }
            return ExitCode::FAILURE;
        }
    };
    config.log_warnings();
    let options = RunOptions {
        exe: own_path(),
        log_format,
        signals: true,
    };
    let start = if upgrade {
        Start::Successor
    } else {
        Start::Fresh(baton::upgrade::Inherited::from_systemd())
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    match runtime.block_on(baton::run(config, start, options, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `argv[0]` made absolute now, so a later `SIGUSR2` runs the file at that
/// path (a package upgrade replaces it), not `/proc/self/exe` (the deleted
/// old file).
fn own_path() -> PathBuf {
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_default();
    if argv0.components().count() > 1 {
        return std::path::absolute(&argv0).unwrap_or(argv0);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&argv0))
            .find(|candidate| candidate.is_file())
    });
    found
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or(argv0)
}

fn upgrade(socket: &Path, binary: Option<PathBuf>) -> ExitCode {
    let binary = binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    let command = ControlCommand::Upgrade { binary };
    match control::request(socket, &command, Duration::from_secs(3600)) {
        Ok(r) if r.ok => {
            let u = r.upgrade.unwrap_or_default();
            println!(
                "upgraded: pid {} (generation {}) -> pid {} (generation {}) in {:.0} ms; {} stream(s) moved, {} stay in the old process to drain",
                u.old_pid,
                u.old_generation,
                u.new_pid,
                u.new_generation,
                u.duration_ms,
                u.moved,
                u.staying
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("upgrade failed: {}", r.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("upgrade failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The control socket: `--control-socket`, else `control.socket` read
/// leniently from the config file.
fn socket(config: &Path, explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| match config::control_socket_of(config) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("baton: {e}");
            std::process::exit(1);
        }
    })
}

fn reload(socket: &Path, dry_run: bool) -> ExitCode {
    let command = ControlCommand::Reload { dry_run };
    match control::request(socket, &command, Duration::from_secs(300)) {
        Ok(r) if r.ok => {
            let report = r.reload.unwrap_or_default();
            if dry_run {
                println!("dry run: the reload would change:");
            } else {
                println!(
                    "reloaded: config generation {} is live ({:.1} ms)",
                    report.config_generation, report.duration_ms
                );
            }
            for change in report.changes {
                println!("  {change}");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("reload failed: {}", r.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("reload failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(socket: &Path, json: bool) -> ExitCode {
    match control::request(socket, &ControlCommand::Status, Duration::from_secs(10)) {
        Ok(r) if r.ok => {
            let status = r.status.unwrap_or_else(|| {
                eprintln!("baton: the answer held no status");
                std::process::exit(1);
            });
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                );
            } else {
                print!("{}", status.render());
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("status failed: {}", r.error.unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("status failed: {e}");
            ExitCode::FAILURE
        }
    }
}
