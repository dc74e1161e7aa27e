//! The `probe-agent` binary, run as users run it: standalone on a folder of
//! manifests, stopped with Ctrl-C (SIGINT), and refused without privileges.

mod common;

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use common::{AGENT, AgentProcess, loadgen, program_ids};

const GETPPID_TRACEPOINT: &str = "\
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: parent-lookups
  namespace: default
spec:
  probe:
    tracepoint:
      group: syscalls
      name: sys_enter_getppid
  table: parent_lookups
";

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The venv the harness installs (scripts/install-harness.sh), with pyarrow
/// and the ADBC Flight SQL driver.
fn python() -> std::path::PathBuf {
    let cache = std::env::var_os("SONDE_CACHE").unwrap_or_else(|| "/var/cache/sonde".into());
    let python = std::path::Path::new(&cache).join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-harness.sh",
        python.display()
    );
    python
}

#[test]
fn captured_rows_are_served_over_flight_sql_to_real_clients() {
    let manifests = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        manifests.path().join("tp.yaml"),
        GETPPID_TRACEPOINT.replace("namespace: default", "namespace: shop"),
    )
    .expect("write manifest");
    let agent = AgentProcess::start(manifests.path(), &["--report-interval", "1m"]);
    let (serving, _) = agent.expect("serving Arrow Flight", Duration::from_secs(60));
    let url = serving
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .and_then(|w| w.strip_suffix(';'))
        .expect("a http:// address")
        .replace("http://", "grpc://");

    let loadgen = Command::new(loadgen())
        .args(["getppid", "2500", "--wait-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sonde-loadgen");
    let pid = loadgen.id();
    let mut loadgen = loadgen;
    {
        use std::io::Write;
        let mut stdin = loadgen.stdin.take().expect("piped stdin");
        stdin
            .write_all(b"go\n")
            .expect("release the load generator");
    }
    assert!(loadgen.wait().expect("wait").success());

    // Rows are sealed into the store within a second; poll for up to ten.
    let script = format!(
        r#"
import time, adbc_driver_flightsql.dbapi as flightsql, pyarrow.flight as fl
client = fl.FlightClient("{url}")
names = sorted(".".join(p.decode() for p in f.descriptor.path) for f in client.list_flights())
conn = flightsql.connect("{url}")
for _ in range(40):
    cur = conn.cursor()
    cur.execute("SELECT count(*) AS n, min(comm) AS comm FROM shop.parent_lookups WHERE pid = {pid}")
    n, comm = cur.fetchone()
    cur.close()
    if n >= 2500:
        break
    time.sleep(0.25)
print(",".join(names), n, comm)
"#
    );
    let output = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The baseline tables are there from the start, with no resource.
    assert_eq!(
        stdout.trim(),
        "shop.parent_lookups,sonde.conn_stats,sonde.dns_events,sonde.http_events,\
         sonde.network_stats,sonde.process_stats 2500 sonde-loadgen"
    );

    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
}

#[test]
fn ctrl_c_detaches_and_unloads_every_program() {
    let manifests = tempfile::tempdir().expect("temp dir");
    std::fs::write(manifests.path().join("tp.yaml"), GETPPID_TRACEPOINT).expect("write manifest");
    // Only the final report is logged: it must count every call made.
    let agent = AgentProcess::start(manifests.path(), &["--report-interval", "60m"]);
    let next_line = |what: &str| agent.expect(what, Duration::from_secs(60)).0;
    next_line("attached");
    let ids = program_ids(&next_line("standalone agent running"));
    assert_eq!(ids.len(), 1, "one hook, one program");
    assert!(loaded_program_ids().contains(&ids[0]));

    let status = Command::new(loadgen())
        .args(["getppid", "1000"])
        .stdout(Stdio::null())
        .status()
        .expect("run sonde-loadgen");
    assert!(status.success());

    agent.interrupt();
    // The final report follows the signal; it counts at least our calls.
    let report = next_line("tracepoint=default/parent-lookups");
    let captured: u64 = report
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("captured="))
        .and_then(|n| n.parse().ok())
        .expect("report has captured=N");
    assert!(captured >= 1000, "{report}");
    next_line("stopped; every program detached");
    let status = agent.wait();
    assert!(status.success(), "agent exit status {status}");
    let still_loaded: Vec<_> = loaded_program_ids()
        .into_iter()
        .filter(|id| ids.contains(id))
        .collect();
    assert!(
        still_loaded.is_empty(),
        "programs {still_loaded:?} outlived the agent"
    );
}

fn one_line_failure(command: &mut Command) -> String {
    let output = command.output().expect("run probe-agent");
    assert!(!output.status.success(), "agent must fail");
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
    lines[0].to_owned()
}

#[test]
fn without_privileges_the_agent_names_what_is_missing() {
    let manifests = tempfile::tempdir().expect("temp dir");
    // uid/gid 65534 is `nobody`: no capabilities at all.
    let line = one_line_failure(
        Command::new(AGENT)
            .args(["--standalone", "--manifests"])
            .arg(manifests.path())
            .uid(65534)
            .gid(65534),
    );
    assert_eq!(
        line,
        "probe-agent: missing privilege: loading eBPF programs needs root, or CAP_BPF and \
         CAP_PERFMON; this process lacks CAP_BPF and CAP_PERFMON"
    );
}

#[test]
fn without_tracefs_the_agent_names_the_mount() {
    let manifests = tempfile::tempdir().expect("temp dir");
    let line = one_line_failure(
        Command::new(AGENT)
            .args(["--standalone", "--manifests"])
            .arg(manifests.path())
            .args(["--tracefs", "/nonexistent/tracing"]),
    );
    assert_eq!(
        line,
        "probe-agent: tracefs is not mounted at /nonexistent/tracing: mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing` or pass --tracefs"
    );
}
