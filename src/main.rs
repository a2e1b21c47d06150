//! The `casewarden` binary: parse the command line, set up logging, run the command.

use std::io::IsTerminal;

use clap::FromArgMatches;
use tracing_subscriber::EnvFilter;

use casewarden::cli::{Cli, Command, LogFormat};

// Parsing pages of cases and evaluating rules allocate a lot: with mimalloc a 100,000-case
// pass takes 3.8 s instead of 5.1 s (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(cli: &Cli) {
    // The demo prints its own story; its logs would only interleave with it.
    let quiet_default = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info"
    };
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => quiet_default,
        (false, 1) => "debug",
        _ => "trace",
    };
    // Dependencies stay at warn unless RUST_LOG asks: their trace output is noise here.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,casewarden={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::from_arg_matches(&casewarden::cli::command().get_matches())
        .unwrap_or_else(|e| e.exit());
    init_tracing(&cli);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // One I/O worker: rules run on rayon's threads and SQLite on its own, so a second
    // worker mostly adds wake-ups between threads (a 100,000-case pass: ~10% less CPU with
    // one, BENCHMARKS.md). `TOKIO_WORKER_THREADS` still sets another number.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(casewarden::cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        // A reader that went away (`casewarden audit | head`) is not an error of ours.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(casewarden::cli::code_of(&e))
        }
    }
}
