//! Makes an exact number of syscalls, so tests and benchmarks can compare
//! what Sonde captured (and counted as lost) with what really happened.
//!
//! `sonde-loadgen getppid 100000` calls getppid(2) 100000 times;
//! `sonde-loadgen openat 1000 /tmp/x` opens (and closes) a path 1000 times.
//! With `--wait-stdin` it first waits for a line on stdin, which lets the
//! caller attach probes to its pid before the load starts; `--wait-file`
//! does the same for a process without a usable stdin (a pod's), starting
//! once the file exists. `--rate` paces the calls (per second, in steps of
//! a millisecond). `--threads` splits the calls (and the rate) over that
//! many threads. `--other-path P --path-every K` opens the path on every
//! K-th call and P on the others (a filter's share of matches). It prints
//! the elapsed nanoseconds per call when done (wall-clock time divided by
//! all calls of all threads), and with `--hold` then keeps running until
//! killed.

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

    /// Threads making the calls; the count and the rate are split among
    /// them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,

    /// For openat: the path opened on the calls that are not a multiple of
    /// `--path-every`.
    #[arg(long, value_name = "PATH")]
    other_path: Option<std::path::PathBuf>,

    /// For openat with `--other-path`: open the path on every K-th call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    path_every: u64,
}

/// What one thread calls.
struct Load<'a> {
    syscall: Syscall,
    path: &'a std::path::Path,
    other_path: Option<&'a std::path::Path>,
    path_every: u64,
}

/// Makes calls `first..first + count` of the load.
fn call(load: &Load<'_>, first: u64, count: u64) {
    match load.syscall {
        Syscall::Getppid => {
            for _ in 0..count {
                std::hint::black_box(nix::unistd::getppid());
            }
        }
        Syscall::Openat => {
            for n in first..first + count {
                let path = match load.other_path {
                    Some(other) if n % load.path_every != 0 => other,
                    _ => load.path,
                };
                // Opening may fail (e.g. a missing path): the syscall still happened.
                drop(std::fs::File::open(path));
            }
        }
    }
}

/// Makes `count` calls at `rate` per second (0: at once).
fn run(load: &Load<'_>, count: u64, rate: u64) {
    let start = Instant::now();
    let mut done = 0;
    while done < count {
        // Calls due by now at the requested rate, or all of them.
        let due = if rate == 0 {
            count
        } else {
            let elapsed = start.elapsed().as_nanos();
            let due = elapsed * u128::from(rate) / 1_000_000_000 + 1;
            count.min(u64::try_from(due).unwrap_or(u64::MAX))
        };
        let batch = due.saturating_sub(done);
        call(load, done, batch);
        done += batch;
        if done < count {
            std::thread::sleep(Duration::from_millis(1));
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
    let load = Load {
        syscall: args.syscall,
        path: &args.path,
        other_path: args.other_path.as_deref(),
        path_every: args.path_every,
    };
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..args.threads {
            // The first `count % threads` threads take one call more.
            let count = args.count / args.threads + u64::from(thread < args.count % args.threads);
            let rate = args.rate.div_ceil(args.threads);
            let load = &load;
            scope.spawn(move || run(load, count, rate));
        }
    });
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
