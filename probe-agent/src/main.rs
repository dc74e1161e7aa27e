//! `probe-agent`: configuration and logging around [`probe_agent::run`].

use std::process::ExitCode;

use clap::Parser;
use probe_agent::{config::Config, run};

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates under contention an arena of its
/// own, up to eight per core, and memory freed in one arena serves only
/// that arena. The agent's threads (the drive loop, the runtime's workers
/// and blocking pool, the metrics thread) then each keep a share of the
/// heap resident: with a 256 MiB table under load, 28 MiB of heap beside
/// the table's rows, against 18 MiB with two arenas, at the same rate and
/// nothing lost. The hot path allocates nothing per event, so fewer arenas
/// cost no contention there. Set before any thread starts; a
/// `GLIBC_TUNABLES=glibc.malloc.arena_max=N` in the environment still wins.
fn limit_malloc_arenas() {
    if std::env::var_os("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("arena_max"))
    {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // before the process starts a thread.
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
