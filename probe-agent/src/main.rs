//! `probe-agent`: wires configuration, logging and shutdown around the
//! library (see `lib.rs`).

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use probe_agent::{
    config::Config,
    preflight,
    standalone::{Standalone, chain},
    tracefs::Tracefs,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("probe-agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), String> {
    // Everything a user can get wrong is checked before anything is loaded.
    preflight::check_privileges().map_err(|e| chain(&e))?;
    let tracefs = Tracefs::locate(config.tracefs.as_deref()).map_err(|e| chain(&e))?;
    let Some(dir) = config.manifests.clone().filter(|_| config.standalone) else {
        return Err(
            "cluster mode is not available in this build; run with --standalone --manifests DIR"
                .to_owned(),
        );
    };
    if !dir.is_dir() {
        return Err(format!("--manifests {} is not a folder", dir.display()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let mut agent = Standalone::start(&config, tracefs, &dir).map_err(|e| chain(&e))?;
        info!(
            node = %config.node_name,
            manifests = %dir.display(),
            attached = agent.attachments().len(),
            programs = ?agent.program_ids(),
            "standalone agent running; a summary per Tracepoint every {:?}; \
             inspect programs with `bpftool prog show`; Ctrl-C stops and detaches",
            config.report_interval
        );
        agent
            .run(
                config.drain_interval,
                config.report_interval,
                shutdown_signal(),
            )
            .await;
        drop(agent);
        info!("stopped; every program detached and unloaded");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the process still dies on the signal, which
        // the kernel cleans up after; wait forever rather than exit early.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
