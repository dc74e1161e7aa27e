//! The pause process of the real node's pod sandboxes: holds the pod's
//! namespaces open and does nothing else until told to stop. It is PID 1 of
//! the sandbox, where signals without a handler are ignored, so it waits for
//! SIGTERM or SIGINT itself.

use nix::sys::signal::{SigSet, Signal};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sonde-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        eprintln!("sonde-pause: cannot block SIGTERM and SIGINT: {e}");
        std::process::exit(1);
    }
    match stop.wait() {
        Ok(_) => {}
        Err(e) => {
            eprintln!("sonde-pause: waiting for a signal failed: {e}");
            std::process::exit(1);
        }
    }
}
