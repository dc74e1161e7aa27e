//! The demo app that the uprobe and USDT tests trace: its command line and
//! the values it computes, which those tests assert on.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const DEMO_APP: &str = env!("CARGO_BIN_EXE_sonde-demo-app");

fn run(args: &[&str]) -> Output {
    let output = Command::new(DEMO_APP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the demo app");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn verbose_prints_each_request_and_its_result() {
    let output = run(&[
        "--requests",
        "3",
        "--start-id",
        "10",
        "--size",
        "5",
        "--verbose",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "request id=10 size=5 result=25\n\
         request id=11 size=5 result=27\n\
         request id=12 size=5 result=29\n"
    );
}

#[test]
fn quiet_by_default_with_ids_from_one_and_size_64() {
    assert!(run(&["--requests", "2"]).stdout.is_empty());
    let output = run(&["--requests", "1", "--verbose"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "request id=1 size=64 result=66\n"
    );
}

#[test]
fn each_request_sleeps_at_least_the_given_time() {
    let start = Instant::now();
    run(&["--requests", "5", "--sleep-us", "4000"]);
    assert!(start.elapsed() >= Duration::from_millis(20));
}

#[test]
fn wait_stdin_holds_the_requests_until_a_line_arrives() {
    let mut child = Command::new(DEMO_APP)
        .args(["--requests", "1", "--verbose", "--wait-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the demo app");
    use std::io::Read as _;

    // It gets to the point of reading stdin (`/proc/<pid>/syscall` shows it
    // blocked in read(0, ...))...
    let read = if cfg!(target_arch = "aarch64") { 63 } else { 0 };
    let blocked = format!("{read} 0x0 ");
    let path = format!("/proc/{}/syscall", child.id());
    let start = Instant::now();
    loop {
        let syscall = std::fs::read_to_string(&path).unwrap_or_default();
        if syscall.starts_with(&blocked) {
            break;
        }
        assert!(
            child.try_wait().expect("poll the demo app").is_none(),
            "it must wait for stdin"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "it never blocked reading stdin: {path} is {syscall:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // ...and has handled no request by then: nothing on its stdout.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("make stdout non-blocking");
    let mut early = [0_u8; 64];
    match stdout.read(&mut early) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("it printed before its line arrived: {other:?}"),
    }
    nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .expect("make stdout blocking again");

    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(b"go\n").expect("release the demo app");
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).expect("read stdout");
    assert!(child.wait().expect("the demo app exits").success());
    assert_eq!(printed, "request id=1 size=64 result=66\n");
}

#[test]
fn bad_arguments_are_refused() {
    let output = Command::new(DEMO_APP)
        .args(["--requests", "many"])
        .output()
        .expect("run the demo app");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--requests"));
}
