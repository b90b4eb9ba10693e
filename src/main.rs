//! The `herald` binary: parse the configuration, start logging, serve.

use std::process::ExitCode;

use clap::Parser;
use herald::{Config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init_tracing(config.log_format);
    match herald::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed and how to fix it.
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
