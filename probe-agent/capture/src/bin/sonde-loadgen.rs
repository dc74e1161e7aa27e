//! Makes an exact number of syscalls, so tests and benchmarks can compare
//! what Sonde captured (and counted as lost) with what really happened.
//!
//! `sonde-loadgen getppid 100000` calls getppid(2) 100000 times;
//! `sonde-loadgen openat 1000 /tmp/x` opens (and closes) a path 1000 times.
//! With `--wait-stdin` it first waits for a line on stdin, which lets the
//! caller attach probes to its pid before the load starts; `--wait-file`
//! does the same for a process without a usable stdin (a pod's), starting
//! once the file exists. `--rate` paces the calls (per second, in steps of
//! a millisecond). It prints the elapsed nanoseconds per call when done,
//! and with `--hold` then keeps running until killed.

use std::{
    io::BufRead,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Syscall {
    Getppid,
    Openat,
}

#[derive(Debug, Parser)]
#[command(version, about = "Makes an exact number of syscalls")]
struct Args {
    /// The syscall to make.
    syscall: Syscall,
    /// How many times.
    count: u64,
    /// Path for openat.
    #[arg(default_value = "/dev/null")]
    path: std::path::PathBuf,
    /// Wait for a line on stdin before starting.
    #[arg(long)]
    wait_stdin: bool,
    /// Wait until this file exists before starting (polled every 10 ms).
    #[arg(long, value_name = "PATH")]
    wait_file: Option<std::path::PathBuf>,
    /// Keep running (sleeping) after the load, until killed.
    #[arg(long)]
    hold: bool,

    /// Calls per second, paced in steps of a millisecond; 0: as fast as
    /// possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// Makes `count` calls of `syscall`.
fn call(syscall: Syscall, path: &std::path::Path, count: u64) {
    match syscall {
        Syscall::Getppid => {
            for _ in 0..count {
                std::hint::black_box(nix::unistd::getppid());
            }
        }
        Syscall::Openat => {
            for _ in 0..count {
                // Opening may fail (e.g. a missing path): the syscall still happened.
                drop(std::fs::File::open(path));
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.wait_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    if let Some(file) = &args.wait_file {
        while !file.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let start = Instant::now();
    let mut done = 0;
    while done < args.count {
        // Calls due by now at the requested rate, or all of them.
        let due = if args.rate == 0 {
            args.count
        } else {
            let elapsed = start.elapsed().as_nanos();
            let due = elapsed * u128::from(args.rate) / 1_000_000_000 + 1;
            args.count.min(u64::try_from(due).unwrap_or(u64::MAX))
        };
        let batch = due.saturating_sub(done);
        call(args.syscall, &args.path, batch);
        done += batch;
        if done < args.count {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{:.1} ns/call",
        elapsed.as_nanos() as f64 / args.count.max(1) as f64
    );
    if args.hold {
        use std::io::Write as _;
        std::io::stdout().flush()?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}
