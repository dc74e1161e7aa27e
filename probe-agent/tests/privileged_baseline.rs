//! Baseline tables of the `probe-agent` binary, standalone with no
//! manifest at all: `sonde.process_stats` fills by itself, and what it
//! says about a process the test runs matches what the kernel says.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arrow_array::{
    Array, RecordBatch, TimestampNanosecondArray, UInt32Array, UInt64Array, cast::AsArray,
};
use common::{AgentProcess, rows, scrape};
use futures::TryStreamExt as _;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A shell spinning on one CPU until killed.
struct BusyLoop(Child);

impl BusyLoop {
    fn start() -> Self {
        Self(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .expect("start sh"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its stat fields after the command name (field 3 first).
    fn stat(&self) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &text[text.rfind(')').unwrap() + 1..];
        after.split_whitespace().map(str::to_owned).collect()
    }

    /// User and system clock ticks, from /proc (fields 14 and 15).
    fn ticks(&self) -> (u64, u64) {
        let stat = self.stat();
        (stat[11].parse().unwrap(), stat[12].parse().unwrap())
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// `getconf CLK_TCK`: the tick the kernel's /proc times are counted in.
fn clock_ticks_per_second() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The newest row of `pid` in `batches`: its time and CPU times.
fn newest_row(batches: &[RecordBatch], pid: u32) -> Option<(i64, u64, u64)> {
    let mut newest: Option<(i64, u64, u64)> = None;
    for batch in batches {
        let pids: &UInt32Array = batch.column_by_name("pid").unwrap().as_primitive();
        let times: &TimestampNanosecondArray =
            batch.column_by_name("time_").unwrap().as_primitive();
        let user: &UInt64Array = batch.column_by_name("cpu_utime_ns").unwrap().as_primitive();
        let system: &UInt64Array = batch.column_by_name("cpu_ktime_ns").unwrap().as_primitive();
        for row in 0..batch.num_rows() {
            if pids.value(row) == pid && newest.is_none_or(|n| times.value(row) > n.0) {
                newest = Some((times.value(row), user.value(row), system.value(row)));
            }
        }
    }
    newest
}

/// The venv the harness installs (scripts/install-harness.sh), with the
/// ADBC Flight SQL driver.
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

/// The value of a sample line `name{labels} value` of a scrape.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_stats_cpu_time_matches_proc() {
    let manifests = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(
        manifests.path(),
        &[
            "--process-stats-interval",
            "500ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--report-interval",
            "1m",
        ],
    );
    let (url, metrics) = tokio::task::block_in_place(|| {
        (
            agent.flight_url(Duration::from_secs(60)),
            agent.metrics_addr(Duration::from_secs(10)),
        )
    });

    // Spin until the kernel has counted a second and a half of CPU time,
    // then freeze the process so its times stop moving.
    let busy = BusyLoop::start();
    let ticks_per_second = clock_ticks_per_second();
    let deadline = Instant::now() + Duration::from_secs(60);
    while {
        let (user, system) = busy.ticks();
        (user + system) * 1000 / ticks_per_second < 1500
    } {
        assert!(
            Instant::now() < deadline,
            "the busy loop never got 1.5 s of CPU"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(Pid::from_raw(busy.pid() as i32), Signal::SIGSTOP).unwrap();
    while busy.stat()[0] != "T" {
        assert!(Instant::now() < deadline, "the busy loop did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped_at = now_ns();
    let (user_ticks, system_ticks) = busy.ticks();
    let expected_user = user_ticks * 1_000_000_000 / ticks_per_second;
    let expected_total = (user_ticks + system_ticks) * 1_000_000_000 / ticks_per_second;

    // A sample taken after the stop, served over Flight.
    let (user, system) = loop {
        let batches = rows(&url, "sonde.process_stats").await;
        if let Some((time, user, system)) = newest_row(&batches, busy.pid())
            && time > stopped_at
        {
            break (user, system);
        }
        assert!(
            Instant::now() < deadline,
            "no sonde.process_stats row of pid {} after it stopped",
            busy.pid()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let off = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 * 100.0;
    eprintln!(
        "process_stats: user {user} ns, system {system} ns; /proc: user {expected_user} ns, \
         total {expected_total} ns; off by {:.3}% (total), {:.3}% (user)",
        off(user + system, expected_total),
        off(user, expected_user)
    );
    assert!(off(user + system, expected_total) <= 5.0);
    assert!(off(user, expected_user) <= 5.0);

    // The same through Flight SQL from a client no one here wrote.
    let script = format!(
        r#"
import adbc_driver_flightsql.dbapi as flightsql
conn = flightsql.connect("{}")
cur = conn.cursor()
cur.execute("SELECT max(cpu_utime_ns + cpu_ktime_ns) FROM sonde.process_stats WHERE pid = {}")
print(cur.fetchone()[0])
"#,
        url.replace("http://", "grpc://"),
        busy.pid()
    );
    let output = tokio::task::block_in_place(|| {
        Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap()
    });
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        (user + system).to_string()
    );

    // The samples are counted, with what they cost.
    let body = tokio::task::spawn_blocking(move || scrape(&metrics))
        .await
        .unwrap();
    let samples = sample(
        &body,
        "sonde_baseline_samples_total{table=\"process_stats\"}",
    )
    .expect("samples counted");
    let seconds = sample(
        &body,
        "sonde_baseline_sample_seconds_total{table=\"process_stats\"}",
    )
    .expect("sample time counted");
    let rows_total =
        sample(&body, "sonde_baseline_rows_total{table=\"process_stats\"}").expect("rows counted");
    assert!(samples >= 2.0, "{body}");
    assert!(
        rows_total >= samples,
        "a sample holds at least the busy loop"
    );
    assert_eq!(
        sample(&body, "sonde_baseline_enabled{table=\"process_stats\"}"),
        Some(1.0)
    );
    eprintln!(
        "process_stats: {samples} samples, {:.2} rows and {:.2} ms each on average",
        rows_total / samples,
        seconds / samples * 1000.0
    );
    drop(busy);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}

#[test]
fn switched_off_tables_are_not_created() {
    let manifests = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(
        manifests.path(),
        &["--baseline-tables", "none", "--report-interval", "1m"],
    );
    agent.expect("baseline table switched off", Duration::from_secs(60));
    let url = agent.flight_url(Duration::from_secs(60));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Switched on, the table is listed from the start: it is created
    // before the first sample.
    let tables = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::FlightClient::new(channel);
        let flights: Vec<_> = client
            .list_flights(Vec::new())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let status = client
            .do_get(arrow_flight::Ticket::new(
                r#"{"table":"sonde.process_stats"}"#,
            ))
            .await
            .err();
        (flights.len(), status)
    });
    assert_eq!(tables.0, 0, "no table without manifests or baseline");
    let error = tables.1.expect("the table is unknown").to_string();
    assert!(error.contains("process_stats"), "{error}");
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
}

/// The cgroup v2 hierarchy's mount point, from /proc/self/mounts.
fn unified_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].into())
        })
        .expect("a cgroup v2 hierarchy (TOOLCHAIN.md: /sys/fs/cgroup/unified)")
}

/// A cgroup v2 folder of the test's own, removed on drop (once empty).
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn create() -> Self {
        Self::named("net")
    }

    /// A cgroup of this test process's own, `what` telling tests apart.
    fn named(what: &str) -> Self {
        let dir = unified_root().join(format!("sonde-{what}-test-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.0).unwrap().ino()
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The newest row of `cgroup` in `batches`: time, rx bytes, tx bytes.
fn newest_traffic(batches: &[RecordBatch], cgroup: u64) -> Option<(i64, u64, u64)> {
    let mut newest: Option<(i64, u64, u64)> = None;
    for batch in batches {
        let ids: &UInt64Array = batch.column_by_name("cgroup_id").unwrap().as_primitive();
        let times: &TimestampNanosecondArray =
            batch.column_by_name("time_").unwrap().as_primitive();
        let rx: &UInt64Array = batch.column_by_name("rx_bytes").unwrap().as_primitive();
        let tx: &UInt64Array = batch.column_by_name("tx_bytes").unwrap().as_primitive();
        for row in 0..batch.num_rows() {
            if ids.value(row) == cgroup && newest.is_none_or(|n| times.value(row) > n.0) {
                newest = Some((times.value(row), rx.value(row), tx.value(row)));
            }
        }
    }
    newest
}

/// The agent with `sonde.network_stats` alone, sampled every 500 ms, once
/// its programs are attached; and its Flight URL.
fn network_agent(manifests: &std::path::Path) -> (AgentProcess, String) {
    let agent = AgentProcess::start(
        manifests,
        &[
            "--baseline-tables",
            "network_stats",
            "--network-stats-interval",
            "500ms",
            "--report-interval",
            "1m",
        ],
    );
    tokio::task::block_in_place(|| {
        agent.expect(
            "baseline table collecting: every cgroup's packets",
            Duration::from_secs(60),
        );
        let url = agent.flight_url(Duration::from_secs(60));
        (agent, url)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_stats_count_a_cgroups_loopback_bytes() {
    const SENT: usize = 8 << 20;
    const RECEIVED: usize = 4 << 20;
    let manifests = tempfile::tempdir().unwrap();
    let (agent, url) = network_agent(manifests.path());

    // The server side runs here, outside the cgroup: it reads what the
    // client sends, then answers with RECEIVED bytes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream.write_all(&vec![b'y'; RECEIVED]).unwrap();
        got.len()
    });
    // The client is put in the cgroup before it opens its socket: a
    // socket belongs to the cgroup it was created in.
    let cgroup = TestCgroup::create();
    let script = format!(
        "import socket, sys
sys.stdin.readline()
s = socket.create_connection(('127.0.0.1', {port}))
s.sendall(b'x' * {SENT})
s.shutdown(socket.SHUT_WR)
got = 0
while True:
    d = s.recv(65536)
    if not d:
        break
    got += len(d)
print(got)
"
    );
    let mut client = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    cgroup.add(client.id());
    {
        use std::io::Write as _;
        client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let output = tokio::task::block_in_place(|| client.wait_with_output()).unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        RECEIVED.to_string(),
        "the client received every byte"
    );
    assert_eq!(
        server.join().unwrap(),
        SENT,
        "the server received every byte"
    );
    let done_at = now_ns();

    // A sample read after the client exited, served over Flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (rx, tx) = loop {
        let batches = rows(&url, "sonde.network_stats").await;
        if let Some((time, rx, tx)) = newest_traffic(&batches, cgroup.id())
            && time > done_at
        {
            break (rx, tx);
        }
        assert!(
            Instant::now() < deadline,
            "no sonde.network_stats row of cgroup {} after its traffic",
            cgroup.id()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Counted bytes include IP and TCP headers (and the peer's ACKs on
    // the receiving side): a little more than the payload. How much more
    // depends on how the kernel cut the stream into segments: 52 bytes of
    // headers on each, 0.1 % of 64 KiB segments but 1.3 % of 4 KiB ones,
    // as when the reader drains slowly. Up to 5 % still tells counted
    // traffic from traffic counted twice or missed.
    let off = |got: u64, want: usize| (got as f64 - want as f64) / want as f64 * 100.0;
    eprintln!(
        "network_stats: tx {tx} bytes for {SENT} sent ({:+.3}%), rx {rx} bytes for {RECEIVED} \
         received ({:+.3}%)",
        off(tx, SENT),
        off(rx, RECEIVED)
    );
    assert!((0.0..=5.0).contains(&off(tx, SENT)), "tx {tx}");
    assert!((0.0..=5.0).contains(&off(rx, RECEIVED)), "rx {rx}");
    // In the host's network namespace: no interfaces of its own.
    let batches = rows(&url, "sonde.network_stats").await;
    assert_eq!(
        interface_counters(&batches, cgroup.id()),
        Some(None),
        "drops and errors are null in the host's network"
    );
    drop(cgroup);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}

/// The newest row of `cgroup`'s drops and errors: `None` without a row,
/// `Some(None)` when they are null.
fn interface_counters(batches: &[RecordBatch], cgroup: u64) -> Option<Option<[u64; 4]>> {
    let mut newest: Option<(i64, Option<[u64; 4]>)> = None;
    for batch in batches {
        let ids: &UInt64Array = batch.column_by_name("cgroup_id").unwrap().as_primitive();
        let times: &TimestampNanosecondArray =
            batch.column_by_name("time_").unwrap().as_primitive();
        let columns: Vec<&UInt64Array> = ["rx_drops", "rx_errors", "tx_drops", "tx_errors"]
            .iter()
            .map(|c| batch.column_by_name(c).unwrap().as_primitive())
            .collect();
        for row in 0..batch.num_rows() {
            if ids.value(row) == cgroup && newest.is_none_or(|n| times.value(row) > n.0) {
                let values = (!columns[0].is_null(row))
                    .then(|| std::array::from_fn(|i| columns[i].value(row)));
                newest = Some((times.value(row), values));
            }
        }
    }
    newest.map(|(_, values)| values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_stats_drops_and_errors_come_from_a_cgroups_own_network() {
    let manifests = tempfile::tempdir().unwrap();
    let (agent, url) = network_agent(manifests.path());
    // A shell in a network namespace of its own, in the cgroup before it
    // sends anything: loopback traffic gives the cgroup its rows, and a
    // veth pair gives the namespace interfaces that are not `lo`.
    let cgroup = TestCgroup::named("netns");
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c"])
        .arg(
            "read go; ip link set lo up && ip link add v0 type veth peer name v1 && \
             ip link set v0 up && ip link set v1 up && python3 -c 'import socket; \
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(bytes(100), (\"127.0.0.1\", 9)) for _ in range(100)]' \
             && echo ready && sleep 60",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start unshare");
    cgroup.add(child.id());
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let mut line = String::new();
    tokio::task::block_in_place(|| {
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)
    })
    .unwrap();
    assert_eq!(line.trim(), "ready", "the namespace was set up");
    let done_at = now_ns();
    // What the kernel says of the namespace's interfaces, read here.
    let net_dev = std::fs::read_to_string(format!("/proc/{}/net/dev", child.id())).unwrap();
    let mut want = [0_u64; 4];
    let mut interfaces = 0;
    for line in net_dev.lines().skip(2) {
        let (name, values) = line.split_once(':').unwrap();
        if name.trim() == "lo" {
            continue;
        }
        interfaces += 1;
        let values: Vec<u64> = values
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        for (sum, at) in want.iter_mut().zip([3, 2, 11, 10]) {
            *sum += values[at];
        }
    }
    assert_eq!(interfaces, 2, "v0 and v1: {net_dev}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let batches = rows(&url, "sonde.network_stats").await;
        if let Some((time, _, _)) = newest_traffic(&batches, cgroup.id())
            && time > done_at
        {
            break interface_counters(&batches, cgroup.id()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no row of the namespace's cgroup"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        got,
        Some(want),
        "drops and errors of the namespace's own interfaces"
    );
    eprintln!("network_stats: own network namespace, drops and errors {want:?}");
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
    drop(cgroup);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}
