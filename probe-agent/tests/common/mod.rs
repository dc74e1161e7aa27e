//! The `probe-agent` binary run as users run it, for the integration tests:
//! standalone on a folder of manifests or in cluster mode on a kubeconfig,
//! its log read line by line, stopped with Ctrl-C (SIGINT) or killed.

#![allow(dead_code)] // Each test file uses part of this module.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt as _;
use serde_json::json;
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_probe-agent");

/// A workload binary of the probe-capture package (`sonde-loadgen`,
/// `sonde-demo-app`): `cargo test` builds it beside the agent when it
/// builds that package's tests, as the workspace test run does.
pub fn workload(name: &str) -> &'static str {
    let path = Path::new(AGENT).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p probe-capture --bins`",
        path.display()
    );
    // Test processes are short-lived: a path per call site is fine to keep.
    Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
}

/// The load generator: a known number of syscalls.
pub fn loadgen() -> &'static str {
    workload("sonde-loadgen")
}

/// The demo application the uprobe, uretprobe and USDT examples trace.
pub fn demo_app() -> &'static str {
    workload("sonde-demo-app")
}

/// A running agent. Dropping it stops it (SIGINT, then wait).
pub struct AgentProcess {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl AgentProcess {
    /// Starts the agent on `manifests` with Flight on a free port, plus `args`.
    pub fn start(manifests: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(AGENT);
        command.args(["--standalone", "--manifests"]).arg(manifests);
        Self::spawn(command, args)
    }

    /// Starts the agent (`binary`, such as a [`PinnedBinary`] of [`AGENT`])
    /// in cluster mode as node `node` of the cluster `kubeconfig` points to,
    /// with Flight on a free port, plus `args`.
    pub fn start_cluster(binary: &Path, kubeconfig: &Path, node: &str, args: &[&str]) -> Self {
        let mut command = Command::new(binary);
        command
            .args(["--node-name", node])
            .env("KUBECONFIG", kubeconfig);
        Self::spawn(command, args)
    }

    /// Starts `command` (the agent, or a wrapper that execs it) with Flight on
    /// a free port, plus `args`.
    pub fn spawn(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(["--flight-addr", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SONDE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect("start probe-agent");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: Some(child),
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for a log line containing `what`; returns it and the wait.
    pub fn expect(&self, what: &str, within: Duration) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return (line, start.elapsed()),
                Ok(_) => {}
                Err(_) => panic!("agent did not log {what:?} within {within:?}"),
            }
        }
    }

    /// Waits up to a minute for a log line containing `what`.
    pub fn wait_for_line(&self, what: &str) -> String {
        self.expect(what, Duration::from_secs(60)).0
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGINT).expect("send SIGINT");
    }

    /// Ctrl-C and wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.interrupt();
        let mut child = self.child.take().expect("the agent is running");
        child.wait().expect("agent exits")
    }

    /// Kills the agent outright (SIGKILL), as a crash would, and reaps it.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("send SIGKILL");
            let _ = child.wait();
        }
    }

    /// The Flight address from the "serving Arrow Flight" line, as
    /// `http://127.0.0.1:<port>`.
    pub fn flight_url(&self, within: Duration) -> String {
        let (line, _) = self.expect("serving Arrow Flight", within);
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .and_then(|w| w.strip_suffix(';'))
            .expect("a http:// address")
            .to_owned()
    }

    /// The `/metrics` address from the "serving Prometheus metrics" line, as
    /// `127.0.0.1:<port>`.
    pub fn metrics_addr(&self, within: Duration) -> String {
        let (line, _) = self.expect("serving Prometheus metrics", within);
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|w| w.strip_suffix("/metrics"))
            .expect("a http:// address ending in /metrics")
            .to_owned()
    }

    /// Waits for the exit of an agent already told to stop.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the agent is running");
        child.wait().expect("agent exits")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Only when an assertion unwinds before `stop` or `wait`.
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            let _ = child.wait();
        }
    }
}

/// A hard link to a binary of the target directory, private to one test:
/// another build sharing the target directory may replace the original
/// while a long test still starts processes from it. Removed on drop.
pub struct PinnedBinary(PathBuf);

impl PinnedBinary {
    pub fn new(binary: &str) -> Self {
        let name = Path::new(binary)
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let pinned = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-pinned-{}", std::process::id()));
        let _ = std::fs::remove_file(&pinned);
        std::fs::hard_link(binary, &pinned)
            .or_else(|_| std::fs::copy(binary, &pinned).map(|_| ()))
            .expect("pin the binary");
        Self(pinned)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinnedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Extracts `programs=[1, 2]` from the agent's start-up line.
pub fn program_ids(line: &str) -> Vec<u32> {
    let start = line
        .find("programs=[")
        .expect("start-up line lists programs")
        + 10;
    let end = start + line[start..].find(']').expect("closing bracket");
    line[start..end]
        .split(',')
        .filter_map(|id| id.trim().parse().ok())
        .collect()
}

/// Every row of a table, over Flight.
pub async fn rows(url: &str, table: &str) -> Vec<RecordBatch> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
    let ticket = Ticket::new(json!({"table": table}).to_string());
    match client.do_get(ticket).await {
        Ok(stream) => stream.try_collect().await.unwrap(),
        // Not created yet.
        Err(_) => Vec::new(),
    }
}

pub fn count(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let values = b
                .column_by_name(column)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..values.len())
                .map(|i| (!values.is_null(i)).then(|| values.value(i).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn pids(batches: &[RecordBatch]) -> Vec<u32> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("pid")
                .unwrap()
                .as_any()
                .downcast_ref::<UInt32Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// Ids of the programs with an attached link, as bpftool lists them.
pub fn linked_programs() -> Vec<u32> {
    let output = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("run bpftool (scripts/install.sh installs it)");
    assert!(output.status.success(), "bpftool link show failed");
    let links: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    links
        .iter()
        .filter_map(|l| l["prog_id"].as_u64())
        .map(|id| id as u32)
        .collect()
}

/// `GET /metrics` from `addr`; the body.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The operator binary, built beside the agent's by `cargo test --workspace`.
pub fn operator_binary() -> PathBuf {
    let path = Path::new(AGENT).with_file_name("sonde-operator");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p operator`",
        path.display()
    );
    path
}

/// The operator process; killed on drop.
pub struct Operator(pub Child);

impl Operator {
    /// Starts it for `namespace` with `kubeconfig`'s identity.
    pub fn start(kubeconfig: &Path, namespace: &str) -> Self {
        let port = e2e::free_port().unwrap();
        let child = Command::new(operator_binary())
            .args(["--namespace", namespace, "--heartbeat-grace", "6s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stderr(Stdio::null())
            .spawn()
            .expect("start sonde-operator");
        Self(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}
