//! `sonde`: see the library for the commands.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sonde: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout().lock();
    match runtime.block_on(cli::run(cli, stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`sonde tail | head`): not an error.
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sonde: {error}");
            ExitCode::FAILURE
        }
    }
}
