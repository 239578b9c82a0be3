//! The `baton` command line: parse, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use baton::config::Config;
use baton::logging::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baton", version, about = "A TCP/TLS reverse proxy and load balancer you can reload and upgrade while it serves")]
struct Cli {
    /// The config file.
    #[arg(short = 'c', long = "config", global = true, default_value = "config.yaml")]
    config: PathBuf,
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground (the default command).
    Run,
    /// Validate a config: exit 0 if valid, 1 with every error if not.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config, cli.log_format),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: ok: {}", config.path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{} error(s)", e.problems.len());
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, log_format: LogFormat) -> ExitCode {
    logging::init(log_format);
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The multi-thread runtime honours TOKIO_WORKER_THREADS; by default one
    // worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(baton::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
