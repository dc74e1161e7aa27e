//! What the privileged capture tests share: an engine on this kernel, and
//! children that wait on stdin until their probes are attached.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use probe_capture::{
    engine::Engine, loader::LoadOptions, plan::HostPaths, preflight, tracefs::Tracefs,
};

/// The engine, or a clear panic where eBPF cannot be loaded.
pub fn engine(options: LoadOptions) -> Engine {
    if let Err(e) = preflight::check_privileges() {
        panic!("this test loads eBPF programs and cannot run here: {e}");
    }
    let tracefs = Tracefs::locate(None).expect("tracefs mounted (scripts/install.sh mounts it)");
    Engine::load(tracefs, options, "test-node", Box::new(HostPaths)).expect("eBPF object loads")
}

/// Starts a program paused on stdin, so probes can target its pid first.
pub fn paused(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

/// Releases a paused child and drains the ring until it exits.
pub fn run_to_end(engine: &mut Engine, child: &mut Child) {
    let mut stdin = child.stdin.take().expect("child stdin is piped");
    stdin.write_all(b"go\n").expect("release the child");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        engine.drain();
        if let Some(status) = child.try_wait().expect("wait for child") {
            assert!(status.success(), "child failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "child did not finish in time");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.drain();
}
