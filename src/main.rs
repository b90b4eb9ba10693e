//! The `herald` binary: with no command, parse the server's configuration,
//! start logging and serve; `herald tail` and `herald publish` are the
//! terminal client ([`herald::cli`]).

use std::process::ExitCode;

use clap::Parser;
use herald::cli::Cli;
use herald::{Config, telemetry};

/// mimalloc instead of glibc's malloc: at 5,000 single-event publishes a
/// second glibc's `malloc`/`free` took about 13 % of herald's CPU samples
/// (fastbin consolidation and free-list unlinking across the runtime's
/// threads). Its v2 allocator also holds less per idle stream here than
/// glibc (`BENCHMARKS.md`, "mimalloc").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(command) => herald::cli::main(command),
        None => serve(cli.server),
    }
}

#[tokio::main]
async fn serve(config: Config) -> ExitCode {
    let export = telemetry::otel::Export::resolve(config.otlp_endpoint.as_deref());
    if let Err(e) = telemetry::init_tracing(config.log_format, &export) {
        eprintln!("herald: {e:#}");
        return ExitCode::FAILURE;
    }
    match herald::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed and how to fix it.
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
