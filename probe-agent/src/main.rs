//! `probe-agent`: configuration and logging around [`probe_agent::run`].

use std::process::ExitCode;

use clap::Parser;
use probe_agent::{config::Config, run};

fn main() -> ExitCode {
    let config = Config::parse();
    sonde_daemon::init_logging();
    match run::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("probe-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
