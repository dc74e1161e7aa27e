//! A program with a function and USDT probes whose arguments, results and
//! durations are known exactly, for the uprobe, uretprobe and USDT tests and
//! examples to trace.
//!
//! `sonde-demo-app --requests N --sleep-us US` calls `handle_request(id,
//! size, US)` N times, with ids counting up from `--start-id` (default 1)
//! and `size` from `--size` (default 64). Each call sleeps US microseconds
//! and returns `2 * id + size`. It also fires two USDT probes:
//!
//! - `sonde:request` with `(id: u64, size: u32)` on entry, always;
//! - `sonde:request_done` with `(id: u64, result: i64)` on exit, only while
//!   its semaphore is raised, i.e. while something is attached to it with
//!   the semaphore (reference counter) offset set.
//!
//! With `--wait-stdin` it first waits for a line on stdin (or its end), so
//! the caller can attach before the first call. With `--verbose` it prints
//! one line per request.
//!
//! `--step-file PATH --step-sleep-us US` steps the latency at a moment the
//! caller picks, for the anomaly detection tests: once PATH exists (checked
//! before each request until it does), every further request sleeps US
//! microseconds instead of `--sleep-us`, and passes US as its third
//! argument, so the traced rows tell which requests came after the step.

// Attaching by name needs an unmangled symbol, and the USDT probes need
// inline assembly and a semaphore in a named section: this file opts out of
// the workspace's unsafe_code denial for exactly those items.

use std::{
    hint::black_box,
    io::BufRead,
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::Duration,
};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Calls handle_request with known arguments, for tracing tests"
)]
struct Args {
    /// How many requests to handle.
    #[arg(long)]
    requests: u64,
    /// How long each request sleeps, in microseconds.
    #[arg(long, default_value_t = 0)]
    sleep_us: u64,
    /// The id of the first request; each next one adds 1.
    #[arg(long, default_value_t = 1)]
    start_id: u64,
    /// The size argument of every request.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Wait for a line on stdin before starting.
    #[arg(long)]
    wait_stdin: bool,
    /// Wait until this file exists before starting (at most an hour), for
    /// runs with no stdin, such as a container.
    #[arg(long, value_name = "PATH")]
    wait_file: Option<std::path::PathBuf>,
    /// Print one line per request.
    #[arg(long)]
    verbose: bool,
    /// Print the loop's nanoseconds per request when done.
    #[arg(long)]
    print_ns: bool,
    /// Once this file exists, requests sleep `--step-sleep-us` instead.
    #[arg(long, value_name = "PATH", requires = "step_sleep_us")]
    step_file: Option<std::path::PathBuf>,
    /// How long each request sleeps once `--step-file` exists, in
    /// microseconds.
    #[arg(long, requires = "step_file")]
    step_sleep_us: Option<u64>,
}

/// Raised (non-zero) by the kernel while a uprobe on `sonde:request_done`
/// is attached with this semaphore as its reference counter. SDT tools look
/// for semaphores in the `.probes` section.
#[allow(unsafe_code)]
#[unsafe(link_section = ".probes")]
static REQUEST_DONE_SEMAPHORE: AtomicU16 = AtomicU16::new(0);

/// Handles one request: fires `sonde:request`, sleeps `sleep_us`
/// microseconds, fires `sonde:request_done` if someone listens, and returns
/// `2 * id + size` (wrapping).
///
/// Traced by name, so never inlined, never renamed and with the C calling
/// convention: `id` in rdi, `size` in esi, `sleep_us` in rdx, the result in
/// rax.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn handle_request(id: u64, size: u32, sleep_us: u64) -> i64 {
    usdt_request(id, size);
    if sleep_us > 0 {
        thread::sleep(Duration::from_micros(sleep_us));
    }
    let result = (id as i64).wrapping_mul(2).wrapping_add(i64::from(size));
    if REQUEST_DONE_SEMAPHORE.load(Ordering::Relaxed) != 0 {
        usdt_request_done(id, result);
    }
    result
}

// Each probe site below is a `nop` plus a SystemTap SDT version 3 note
// describing it, as the SystemTap "UserSpaceProbeImplementation" spec lays
// out:
//
// - `.note.stapsdt` (not loaded): namesz, descsz, type 3, the owner
//   "stapsdt", then the descriptor: the `nop`'s address, the link-time
//   address of `_.stapsdt.base`, the semaphore's address (or 0), and the
//   NUL-terminated provider, name and argument spec. The "?" flag puts the
//   note in the section group of the code around it, so a discarded copy of
//   that code takes its note along.
// - `.stapsdt.base` (loaded, one byte, defined once per object through a
//   COMDAT group, and flagged "R" so the linker's garbage collection keeps
//   it although no code refers to it): its address lets a reader detect that
//   the binary was prelinked after the note was written.
//
// The argument spec is `SIZE@OPERAND`; a negative size means signed, and
// the operands are the registers the compiler chose for the `in(reg)`
// operands, in AT&T syntax.

/// Fires `sonde:request(id, size)`.
#[allow(unsafe_code)]
#[inline(always)]
fn usdt_request(id: u64, size: u32) {
    // SAFETY: the template adds a `nop` to the code and data to non-code
    // sections; it only names its register inputs in that data, and touches
    // no memory, stack or flags.
    unsafe {
        std::arch::asm!(
            "2: nop",
            ".pushsection .note.stapsdt, \"?\", @note",
            ".balign 4",
            ".4byte 4f - 3f, 6f - 5f, 3",
            "3: .asciz \"stapsdt\"",
            "4: .balign 4",
            "5: .8byte 2b, _.stapsdt.base, 0",
            ".asciz \"sonde\"",
            ".asciz \"request\"",
            ".asciz \"8@{id} 4@{size:e}\"",
            "6: .balign 4",
            ".popsection",
            ".ifndef _.stapsdt.base",
            ".pushsection .stapsdt.base, \"aGR\", @progbits, .stapsdt.base, comdat",
            ".weak _.stapsdt.base",
            ".hidden _.stapsdt.base",
            "_.stapsdt.base: .space 1",
            ".size _.stapsdt.base, 1",
            ".popsection",
            ".endif",
            id = in(reg) id,
            size = in(reg) size,
            options(att_syntax, nomem, nostack, preserves_flags),
        );
    }
}

/// Fires `sonde:request_done(id, result)`, with `REQUEST_DONE_SEMAPHORE`
/// as its semaphore.
#[allow(unsafe_code)]
#[inline(always)]
fn usdt_request_done(id: u64, result: i64) {
    // SAFETY: as in `usdt_request`; the semaphore is only named, by address,
    // in the note.
    unsafe {
        std::arch::asm!(
            "2: nop",
            ".pushsection .note.stapsdt, \"?\", @note",
            ".balign 4",
            ".4byte 4f - 3f, 6f - 5f, 3",
            "3: .asciz \"stapsdt\"",
            "4: .balign 4",
            "5: .8byte 2b, _.stapsdt.base, {semaphore}",
            ".asciz \"sonde\"",
            ".asciz \"request_done\"",
            ".asciz \"8@{id} -8@{result}\"",
            "6: .balign 4",
            ".popsection",
            ".ifndef _.stapsdt.base",
            ".pushsection .stapsdt.base, \"aGR\", @progbits, .stapsdt.base, comdat",
            ".weak _.stapsdt.base",
            ".hidden _.stapsdt.base",
            "_.stapsdt.base: .space 1",
            ".size _.stapsdt.base, 1",
            ".popsection",
            ".endif",
            id = in(reg) id,
            result = in(reg) result,
            semaphore = sym REQUEST_DONE_SEMAPHORE,
            options(att_syntax, nomem, nostack, preserves_flags),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.wait_stdin {
        // A line or the end of stdin both mean "go".
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    if let Some(path) = &args.wait_file {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        while !path.exists() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{} did not appear within an hour",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let start = std::time::Instant::now();
    let mut sleep_us = args.sleep_us;
    let mut step = args.step_file.as_deref().zip(args.step_sleep_us);
    for id in (0..args.requests).map(|n| args.start_id.wrapping_add(n)) {
        if let Some((path, stepped)) = step
            && path.exists()
        {
            sleep_us = stepped;
            step = None;
        }
        // black_box keeps the arguments opaque, so the call happens with
        // them in registers rather than being folded away.
        let result = handle_request(black_box(id), black_box(args.size), black_box(sleep_us));
        let result = black_box(result);
        if args.verbose {
            println!("request id={id} size={} result={result}", args.size);
        }
    }
    if args.print_ns {
        println!(
            "{:.1} ns/call",
            start.elapsed().as_nanos() as f64 / args.requests.max(1) as f64
        );
    }
    Ok(())
}
