//! `sonde-operator`: flags, logging and signals around [`operator::run`].

use std::process::ExitCode;

use clap::Parser;
use operator::run::{self, Config};

fn main() -> ExitCode {
    let config = Config::parse();
    sonde_daemon::init_logging();
    // The Kubernetes client's TLS; installing fails only if one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sonde-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
