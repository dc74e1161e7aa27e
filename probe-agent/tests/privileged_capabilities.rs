//! The agent with exactly the capabilities the Helm chart gives it
//! (`agent.capabilities` in charts/sonde/values.yaml), all others dropped
//! from its bounding set and no privilege gained on exec, as a container
//! runtime starts it: uprobes, uretprobes, USDT probes and kernel tracepoints
//! all capture every call. Then each capability is taken away in turn and
//! the agent is shown to need it: the set is the least that works here.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{AGENT, AgentProcess};

/// Requests the demo application makes once the probes are attached.
const REQUESTS: u64 = 400;

/// The agent's capabilities as the chart declares them, such as `BPF`.
fn chart_capabilities() -> Vec<String> {
    let values = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sonde/values.yaml");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&values).unwrap()).unwrap();
    let capabilities: Vec<String> =
        serde_yaml::from_value(values["agent"]["capabilities"].clone()).unwrap();
    assert!(!capabilities.is_empty(), "the chart lists no capabilities");
    capabilities
}

/// Kernel capability numbers, for reading the agent's `CapEff`.
fn capability_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for capability {other}"),
    }
}

/// The agent, started through `setpriv` with only `capabilities` in its
/// bounding set (so root's exec keeps exactly those), none inheritable and
/// no_new_privs set, as `allowPrivilegeEscalation: false` does.
fn start_agent(manifests: &Path, capabilities: &[String], args: &[&str]) -> AgentProcess {
    let bounding: String = capabilities
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--bounding-set=-all{bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--", AGENT])
        .args(["--standalone", "--manifests"])
        .arg(manifests);
    AgentProcess::spawn(command, args)
}

/// The effective capabilities of a running process.
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// The demo application, held on stdin until released.
struct DemoApp(Child);

impl DemoApp {
    fn start(binary: &Path, requests: u64) -> Self {
        let child = Command::new(binary)
            .args(["--requests", &requests.to_string(), "--wait-stdin"])
            .args(["--sleep-us", "200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn run(mut self) {
        self.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uprobe(name: &str, kind: &str, binary: &Path, table: &str, extra: &str) -> String {
    let binary = binary.display();
    format!(
        "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: {name}
  namespace: shop
spec:
  probe:
    {kind}:
      binary: {binary}
{extra}  fields:
    - {{name: request_id, source: arg0, type: u64}}
  table: {table}
"
    )
}

/// Manifests for every kind of probe the chart's capabilities must serve.
fn all_kinds(dir: &Path, binary: &Path) {
    let write = |file: &str, text: String| std::fs::write(dir.join(file), text).unwrap();
    write(
        "calls.yaml",
        uprobe(
            "calls",
            "uprobe",
            binary,
            "calls",
            "      symbol: handle_request\n",
        ),
    );
    write(
        "latency.yaml",
        uprobe(
            "latency",
            "uretprobe",
            binary,
            "latency",
            "      symbol: handle_request\n",
        ),
    );
    write(
        "usdt.yaml",
        uprobe(
            "marks",
            "usdt",
            binary,
            "marks",
            "      provider: sonde\n      name: request\n",
        ),
    );
    write(
        "sleeps.yaml",
        "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: sleeps
  namespace: shop
spec:
  probe:
    tracepoint: {group: syscalls, name: sys_enter_clock_nanosleep}
  table: sleeps
"
        .to_owned(),
    );
}

/// Waits until `table` holds `want` rows; returns what it holds then (or at
/// the deadline).
async fn wait_rows(url: &str, table: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = common::count(&common::rows(url, table).await);
        if have >= want || Instant::now() > deadline {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's uprobe events in tracefs, by the group named after its pid.
fn uprobe_events_of(pid: u32) -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!(":sonde_{pid}/")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_capabilities_capture_every_kind_of_probe() {
    let capabilities = chart_capabilities();
    assert!(
        !capabilities.iter().any(|c| c == "SYS_ADMIN"),
        "the chart grants SYS_ADMIN: {capabilities:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let demo_binary = PathBuf::from(common::demo_app());
    all_kinds(dir.path(), &demo_binary);
    let demo = DemoApp::start(&demo_binary, REQUESTS);
    let pid = demo.pid().to_string();

    let agent = start_agent(
        dir.path(),
        &capabilities,
        &["--target-pids", &pid, "--report-interval", "1m"],
    );
    agent.wait_for_line("no CAP_SYS_ADMIN for the uprobe PMU");
    let url = agent.flight_url(Duration::from_secs(60));
    let expected: u64 = capabilities.iter().map(|c| 1 << capability_bit(c)).sum();
    assert_eq!(
        effective_capabilities(agent.pid()),
        expected,
        "the agent runs with exactly {capabilities:?}"
    );
    let events = uprobe_events_of(agent.pid());
    // uprobe, uretprobe (entry and return halves) and the USDT site.
    assert_eq!(events.len(), 4, "{events:?}");

    demo.run();
    for table in ["calls", "latency", "marks"] {
        let rows = wait_rows(&url, &format!("shop.{table}"), REQUESTS).await;
        assert_eq!(rows, REQUESTS, "{table}: one row per request");
    }
    // Each request sleeps once; the C library may sleep again after a signal.
    let sleeps = wait_rows(&url, "shop.sleeps", REQUESTS).await;
    assert!(
        sleeps >= REQUESTS,
        "sleeps: {sleeps} rows for {REQUESTS} requests"
    );

    // network_stats' cgroup_skb programs load: the Flight queries above are
    // traffic of this test's cgroup.
    let traffic = wait_rows(&url, "sonde.network_stats", 1).await;
    assert!(traffic >= 1, "sonde.network_stats is empty");

    let agent_pid = agent.pid();
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
    assert_eq!(
        uprobe_events_of(agent_pid),
        Vec::<String>::new(),
        "the agent removes its uprobe events"
    );
}

/// Starts the agent on one uprobe of `binary` and returns the log line that
/// says whether it attached.
fn attach_outcome(binary: &Path, capabilities: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("calls.yaml"),
        uprobe(
            "calls",
            "uprobe",
            binary,
            "calls",
            "      symbol: handle_request\n",
        ),
    )
    .unwrap();
    let agent = start_agent(dir.path(), capabilities, &["--report-interval", "1m"]);
    let line = agent.wait_for_line("tracepoint=shop/calls");
    assert!(agent.stop().success());
    line
}

fn without(capabilities: &[String], dropped: &str) -> Vec<String> {
    assert!(
        capabilities.iter().any(|c| c == dropped),
        "the chart does not grant {dropped}"
    );
    capabilities
        .iter()
        .filter(|c| *c != dropped)
        .cloned()
        .collect()
}

#[test]
fn each_capability_is_needed() {
    let capabilities = chart_capabilities();

    // BPF and PERFMON: nothing loads without either; the agent says which.
    for (dropped, named) in [("BPF", "CAP_BPF"), ("PERFMON", "CAP_PERFMON")] {
        let output = Command::new("setpriv")
            .arg(format!(
                "--bounding-set=-all{}",
                without(&capabilities, dropped)
                    .iter()
                    .map(|c| format!(",+{}", c.to_lowercase()))
                    .collect::<String>()
            ))
            .args(["--inh-caps=-all", "--no-new-privs", "--", AGENT])
            .args(["--standalone", "--manifests", "/nonexistent-is-not-read"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started without {dropped}");
        assert!(
            stderr.contains(named) && stderr.contains("missing privilege"),
            "without {dropped}: {stderr}"
        );
    }

    // NET_ADMIN: the kernel loads cgroup_skb programs only with it; without
    // it the agent says network_stats cannot be collected, and goes on.
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), &without(&capabilities, "NET_ADMIN"), &[]);
    let line = agent.wait_for_line("baseline table cannot be collected");
    assert!(line.contains("network_stats"), "without NET_ADMIN: {line}");
    assert!(agent.stop().success());

    // SYS_PTRACE: a container's binaries are reached through its process's
    // root, /proc/<pid>/root, which another process with more capabilities
    // than the agent guards.
    let demo = DemoApp::start(Path::new(common::demo_app()), 1);
    let through_root = Path::new("/proc")
        .join(demo.pid().to_string())
        .join("root")
        .join(common::demo_app().trim_start_matches('/'));
    let line = attach_outcome(&through_root, &capabilities);
    assert!(line.contains("attached"), "with the chart's set: {line}");
    assert!(
        !line.contains("not attached"),
        "with the chart's set: {line}"
    );
    let line = attach_outcome(&through_root, &without(&capabilities, "SYS_PTRACE"));
    assert!(
        line.contains("not attached") && line.contains("cannot reach binary"),
        "without SYS_PTRACE: {line}"
    );
    drop(demo);

    // DAC_READ_SEARCH: a binary in a directory only its owner (not root) may
    // enter, as application images often have.
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let binary = private.join("demo-app");
    std::fs::copy(common::demo_app(), &binary).unwrap();
    chown(&private, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let line = attach_outcome(&binary, &capabilities);
    assert!(
        line.contains("attached") && !line.contains("not attached"),
        "with the chart's set: {line}"
    );
    let line = attach_outcome(&binary, &without(&capabilities, "DAC_READ_SEARCH"));
    assert!(
        line.contains("not attached") && line.contains("cannot reach binary"),
        "without DAC_READ_SEARCH: {line}"
    );
}
