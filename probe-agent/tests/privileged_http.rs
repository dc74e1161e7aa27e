//! `sonde.http_events` and `sonde.conn_stats` of the `probe-agent` binary,
//! standalone with no manifest: a real HTTP server and client (Debian's
//! Python, whose `ssl` module uses the system's `libssl.so.3`) on loopback,
//! keep-alive and pipelined, bodies from 0 to 1 MiB, chunked responses,
//! statuses 200/404/500, plaintext and TLS. Every exchange must give
//! exactly one row per traced side, with the right method, path, status,
//! sizes and a latency inside what the client measured; a TCP stream that
//! is not HTTP, running at the same time, must give none.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use arrow_array::{
    Array, BooleanArray, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array,
    cast::AsArray,
};
use common::{AgentProcess, rows, scrape};

/// Debian's Python: its `ssl` module links the system's OpenSSL.
const PYTHON: &str = "/usr/bin/python3";

/// The server: `GET /size/N` answers N bytes with a Content-Length,
/// `GET /chunked/N` N bytes in chunks of 1000, `GET /status/S` status S,
/// `POST /echo` the request body's length. TLS with a certificate and key
/// as arguments.
const SERVER: &str = r#"
import http.server, socketserver, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        kind, value = self.path.strip("/").split("/")
        n = int(value)
        if kind == "status":
            body = b"status"
            self.send_response(n)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            left = n
            while left > 0:
                part = min(1000, left)
                self.wfile.write(b"%x\r\n" % part + b"y" * part + b"\r\n")
                left -= part
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(b"x" * n)
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        got = len(self.rfile.read(n))
        body = str(got).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Handler)
if len(sys.argv) > 2:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The client: every request of argv[3:] ("GET path" or "POST path size")
/// on one keep-alive connection, then three GETs pipelined on a second
/// one (plaintext only). Prints one line per exchange: method, path,
/// status, request body size, response body size, and the nanoseconds
/// from just before the request was sent to just after the response was
/// read.
const CLIENT: &str = r#"
import http.client, socket, ssl, sys, time
port, tls, requests = int(sys.argv[1]), sys.argv[2] == "tls", sys.argv[3:]
if tls:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
else:
    conn = http.client.HTTPConnection("127.0.0.1", port)
for request in requests:
    parts = request.split()
    method, path = parts[0], parts[1]
    body = b"z" * int(parts[2]) if method == "POST" else None
    start = time.monotonic_ns()
    conn.request(method, path, body=body)
    response = conn.getresponse()
    data = response.read()
    took = time.monotonic_ns() - start
    print(method, path, response.status, len(body or b""), len(data), took, flush=True)
conn.close()
if not tls:
    paths = ["/size/10", "/status/404", "/chunked/2500"]
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.monotonic_ns()
    sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths))
    reader = sock.makefile("rb")
    for path in paths:
        status = int(reader.readline().split()[1])
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            size = 0
            while (n := int(reader.readline().split(b";")[0], 16)) > 0:
                size += len(reader.read(n))
                reader.readline()
            reader.readline()
        else:
            size = len(reader.read(int(headers["content-length"])))
        print("GET", path, status, 0, size, time.monotonic_ns() - start, flush=True)
    sock.close()
"#;

/// A TCP stream that is not HTTP: a sink and a client sending argv[1] bytes.
const RAW: &str = r#"
import socket, sys, threading
count = int(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
def serve():
    conn, _ = listener.accept()
    while conn.recv(65536):
        pass
    conn.close()
thread = threading.Thread(target=serve)
thread.start()
client = socket.create_connection(listener.getsockname())
chunk = b"\x00\x01binary" * 100
sent = 0
while sent < count:
    sent += client.send(chunk[: count - sent])
client.close()
thread.join()
"#;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(PYTHON)
            .args(["-c", SERVER])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python HTTP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One exchange as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    req_body: u64,
    resp_body: u64,
}

/// Runs the client; its pid and what it saw, with the time each took.
fn run_client(port: u16, tls: bool, requests: &[String]) -> (u32, Vec<(Exchange, u64)>) {
    let child = Command::new(PYTHON)
        .args([
            "-c",
            CLIENT,
            &port.to_string(),
            if tls { "tls" } else { "plain" },
        ])
        .args(requests)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python HTTP client");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the client failed");
    let seen = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (
                Exchange {
                    method: f[0].to_owned(),
                    path: f[1].to_owned(),
                    status: f[2].parse().unwrap(),
                    req_body: f[3].parse().unwrap(),
                    resp_body: f[4].parse().unwrap(),
                },
                f[5].parse().unwrap(),
            )
        })
        .collect();
    (pid, seen)
}

/// The requests: bodies from 0 to 1 MiB each way, chunked, 404 and 500.
fn requests() -> Vec<String> {
    let mut requests: Vec<String> = [0, 1, 4095, 70_000, 1 << 20]
        .iter()
        .map(|n| format!("GET /size/{n}"))
        .collect();
    requests
        .extend(["GET /chunked/0", "GET /chunked/5500", "GET /chunked/300000"].map(String::from));
    requests.extend(["GET /status/404", "GET /status/500"].map(String::from));
    requests.extend(
        [0, 10, 100_000, 1 << 20]
            .iter()
            .map(|n| format!("POST /echo {n}")),
    );
    requests.extend((0..20).map(|i| format!("GET /size/{i}")));
    requests
}

/// A row of `sonde.http_events`, the columns this test checks.
#[derive(Debug)]
struct Row {
    pid: u32,
    exchange: Exchange,
    role: String,
    encrypted: bool,
    complete: bool,
    latency: u64,
    local_port: Option<u16>,
    remote_port: Option<u16>,
}

fn http_rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let s = |name: &str| -> &StringArray { b.column_by_name(name).unwrap().as_string() };
        let u64s = |name: &str| -> &UInt64Array { b.column_by_name(name).unwrap().as_primitive() };
        let u16s = |name: &str| -> &UInt16Array { b.column_by_name(name).unwrap().as_primitive() };
        let bools = |name: &str| -> &BooleanArray { b.column_by_name(name).unwrap().as_boolean() };
        let pid: &UInt32Array = b.column_by_name("pid").unwrap().as_primitive();
        let port = |array: &UInt16Array, i: usize| (!array.is_null(i)).then(|| array.value(i));
        for i in 0..b.num_rows() {
            out.push(Row {
                pid: pid.value(i),
                exchange: Exchange {
                    method: s("req_method").value(i).to_owned(),
                    path: s("req_path").value(i).to_owned(),
                    status: u16s("resp_status").value(i),
                    req_body: u64s("req_body_size").value(i),
                    resp_body: u64s("resp_body_size").value(i),
                },
                role: s("trace_role").value(i).to_owned(),
                encrypted: bools("encrypted").value(i),
                complete: bools("complete").value(i),
                latency: u64s("latency").value(i),
                local_port: port(u16s("local_port"), i),
                remote_port: port(u16s("remote_port"), i),
            });
        }
    }
    out
}

/// Waits until the table holds `want` rows of each of `pids`.
async fn wait_rows(url: &str, pids: &[u32], want: usize) -> Vec<Row> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = http_rows(&rows(url, "sonde.http_events").await);
        let counts: Vec<usize> = pids
            .iter()
            .map(|p| rows.iter().filter(|r| r.pid == *p).count())
            .collect();
        if counts.iter().all(|c| *c >= want) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "rows of pids {pids:?}: {counts:?}, want {want} each"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Every loss the agent counted for the socket tables (records the ring
/// could not take are counted under `http_events`, whatever their
/// protocol).
fn losses(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| {
            ["http_events", "dns_events", "conn_stats"]
                .iter()
                .any(|t| l.starts_with(&format!("sonde_baseline_dropped_total{{table=\"{t}\"")))
                && !l.ends_with(" 0")
        })
        .collect()
}

/// The agent, standalone with no manifest, collecting the baseline
/// `tables` only, plus `args`; its Flight URL and metrics address.
fn start_agent(manifests: &Path, tables: &str, args: &[&str]) -> (AgentProcess, String, String) {
    let mut all = vec![
        "--baseline-tables",
        tables,
        "--metrics-addr",
        "127.0.0.1:0",
        "--report-interval",
        "1m",
    ];
    all.extend_from_slice(args);
    let agent = AgentProcess::start(manifests, &all);
    let (url, metrics) = tokio::task::block_in_place(|| {
        (
            agent.flight_url(Duration::from_secs(60)),
            agent.metrics_addr(Duration::from_secs(10)),
        )
    });
    (agent, url, metrics)
}

fn check_side(rows: &[Row], pid: u32, role: &str, tls: bool, seen: &[(Exchange, u64)], port: u16) {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.pid == pid).collect();
    assert_eq!(
        mine.len(),
        seen.len(),
        "{role}: one row per exchange: {mine:#?}"
    );
    let mut got: Vec<Exchange> = mine.iter().map(|r| r.exchange.clone()).collect();
    let mut want: Vec<Exchange> = seen.iter().map(|(e, _)| e.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{role}: method, path, status and sizes");
    for row in &mine {
        assert!(row.complete, "{row:?}");
        assert_eq!(row.role, role);
        assert_eq!(row.encrypted, tls);
        // The client's own measurement brackets every call of the exchange.
        let took = seen
            .iter()
            .filter(|(e, _)| *e == row.exchange)
            .map(|(_, t)| *t)
            .max()
            .unwrap();
        assert!(
            row.latency > 0 && row.latency <= took,
            "{role} latency {} ns, the client measured {took} ns: {row:?}",
            row.latency
        );
        let service_port = if role == "client" {
            row.remote_port
        } else {
            row.local_port
        };
        assert_eq!(service_port, Some(port), "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_exchange_is_one_row_per_side() {
    let manifests = tempfile::tempdir().unwrap();
    let (agent, url, metrics) = start_agent(
        manifests.path(),
        "http_events,conn_stats",
        &["--conn-stats-interval", "500ms"],
    );
    let server = Server::start(&[]);
    let requests = requests();
    let (raw, (client, seen)) = tokio::task::block_in_place(|| {
        let raw = Command::new(PYTHON)
            .args(["-c", RAW, "300000"])
            .spawn()
            .unwrap();
        let client = run_client(server.port, false, &requests);
        let raw_pid = raw.id();
        let status = raw.wait_with_output().unwrap().status;
        assert!(status.success());
        (raw_pid, client)
    });
    assert_eq!(seen.len(), requests.len() + 3);
    let rows = wait_rows(&url, &[client, server.child.id()], seen.len()).await;
    check_side(&rows, client, "client", false, &seen, server.port);
    check_side(
        &rows,
        server.child.id(),
        "server",
        false,
        &seen,
        server.port,
    );
    assert!(
        rows.iter().all(|r| r.pid != raw),
        "the non-HTTP stream gave no row"
    );
    eprintln!(
        "http_events: {} exchanges, one row each on the client and the server",
        seen.len()
    );

    // conn_stats: the raw stream's two ends, counted and never copied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batches = common::rows(&url, "sonde.conn_stats").await;
        let mut ends = BTreeMap::new();
        for b in &batches {
            let pid: &UInt32Array = b.column_by_name("pid").unwrap().as_primitive();
            let protocol: &StringArray = b.column_by_name("protocol").unwrap().as_string();
            let sent: &UInt64Array = b.column_by_name("bytes_sent").unwrap().as_primitive();
            let received: &UInt64Array = b.column_by_name("bytes_recv").unwrap().as_primitive();
            let role: &StringArray = b.column_by_name("trace_role").unwrap().as_string();
            let open: &BooleanArray = b.column_by_name("open").unwrap().as_boolean();
            for i in 0..b.num_rows() {
                if pid.value(i) == raw && !open.value(i) {
                    ends.insert(
                        role.value(i).to_owned(),
                        (
                            sent.value(i),
                            received.value(i),
                            protocol.value(i).to_owned(),
                        ),
                    );
                }
            }
        }
        if ends.len() == 2 {
            let other = || "other".to_owned();
            assert_eq!(ends["client"], (300_000, 0, other()), "{ends:?}");
            assert_eq!(ends["server"], (0, 300_000, other()), "{ends:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conn_stats of the raw stream: {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let body = tokio::task::spawn_blocking(move || scrape(&metrics))
        .await
        .unwrap();
    assert_eq!(losses(&body), Vec::<&str>::new(), "nothing was lost");
    assert!(
        sample(&body, "sonde_baseline_rows_total{table=\"http_events\"}").unwrap()
            >= (2 * seen.len()) as f64
    );
    drop(server);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_openssl_is_one_row_per_side_marked_encrypted() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} (Debian's python3) is needed"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success());
    let manifests = tempfile::tempdir().unwrap();
    let (agent, url, metrics) = start_agent(manifests.path(), "http_events", &[]);
    let server = Server::start(&[cert.to_str().unwrap(), key.to_str().unwrap()]);
    // The server has OpenSSL mapped: wait until the agent traces it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = metrics.clone();
        let body = tokio::task::spawn_blocking(move || scrape(&metrics))
            .await
            .unwrap();
        if sample(&body, "sonde_baseline_tls_libraries").is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "OpenSSL was not traced: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests: Vec<String> = [
        "GET /size/0",
        "GET /size/20000",
        "GET /size/1048576",
        "GET /chunked/70000",
        "GET /status/404",
        "GET /status/500",
        "POST /echo 300000",
    ]
    .map(String::from)
    .to_vec();
    let (client, seen) = tokio::task::block_in_place(|| run_client(server.port, true, &requests));
    assert_eq!(seen.len(), requests.len());
    let rows = wait_rows(&url, &[client, server.child.id()], seen.len()).await;
    check_side(&rows, client, "client", true, &seen, server.port);
    check_side(&rows, server.child.id(), "server", true, &seen, server.port);
    let body = tokio::task::spawn_blocking(move || scrape(&metrics))
        .await
        .unwrap();
    assert_eq!(losses(&body), Vec::<&str>::new(), "nothing was lost");
    eprintln!(
        "http_events over TLS: {} exchanges, one row each side",
        seen.len()
    );
    drop(server);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}

/// dnsmasq on a loopback port of its own, answering from its command line
/// only: `www.example.test` A 127.0.0.8, `alias.example.test` a CNAME of
/// it, any other name under `example.test` NXDOMAIN.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start() -> Self {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
            ])
            .arg(format!("--port={port}"))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
            ])
            .args(["--no-hosts", "--local=/example.test/"])
            .args(["--host-record=www.example.test,127.0.0.8"])
            .args(["--cname=alias.example.test,www.example.test"])
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (scripts/install-harness.sh installs dnsmasq-base)");
        Self { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A row of `sonde.dns_events`: name, type, rcode, answers, answered and
/// the server's port.
type DnsRow = (String, String, String, String, bool, u16);

/// What dig saw of one query: its status and answers as "TYPE data".
fn dig(port: u16, name: &str, kind: &str) -> (u32, String, Vec<String>) {
    let child = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=5"])
        .args(["+noall", "+comments", "+answer", "-t", kind, name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run dig (scripts/install-harness.sh installs bind9-dnsutils)");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "dig {name} {kind} failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {text}"))
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f[3], f[4..].join(" "))
        })
        .collect();
    (pid, status, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dns_query_is_one_row_with_its_answers() {
    let manifests = tempfile::tempdir().unwrap();
    let (agent, url, metrics) = start_agent(manifests.path(), "dns_events", &[]);
    let dns = Dnsmasq::start();
    let queries = [
        ("www.example.test", "A"),
        ("www.example.test", "AAAA"),
        ("alias.example.test", "A"),
        ("nx.example.test", "A"),
    ];
    // dnsmasq answers once it has bound its port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::task::block_in_place(|| {
        Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns.port.to_string(),
                "+tries=1",
                "+time=1",
            ])
            .arg("www.example.test")
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    }) {
        assert!(Instant::now() < deadline, "dnsmasq did not answer");
    }
    let mut seen = Vec::new();
    for round in 0..3 {
        for (name, kind) in queries {
            let (pid, status, answers) = tokio::task::block_in_place(|| dig(dns.port, name, kind));
            if round == 0 {
                eprintln!("dig {name} {kind}: {status} {answers:?}");
            }
            seen.push((pid, name, kind, status, answers));
        }
    }
    assert!(seen.iter().any(|s| s.3 == "NXDOMAIN"));
    assert!(
        seen.iter()
            .any(|s| s.4.iter().any(|a| a.starts_with("CNAME")))
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let by_pid = loop {
        let batches = rows(&url, "sonde.dns_events").await;
        let mut by_pid: BTreeMap<u32, Vec<DnsRow>> = BTreeMap::new();
        for b in &batches {
            let pid: &UInt32Array = b.column_by_name("pid").unwrap().as_primitive();
            let s = |name: &str| -> &StringArray { b.column_by_name(name).unwrap().as_string() };
            let answered: &BooleanArray = b.column_by_name("answered").unwrap().as_boolean();
            let port: &UInt16Array = b.column_by_name("remote_port").unwrap().as_primitive();
            for i in 0..b.num_rows() {
                by_pid.entry(pid.value(i)).or_default().push((
                    s("query_name").value(i).to_owned(),
                    s("query_type").value(i).to_owned(),
                    s("rcode").value(i).to_owned(),
                    s("answers").value(i).to_owned(),
                    answered.value(i),
                    port.value(i),
                ));
            }
        }
        if seen.iter().all(|s| by_pid.contains_key(&s.0)) {
            break by_pid;
        }
        assert!(Instant::now() < deadline, "dns_events rows: {by_pid:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (pid, name, kind, status, answers) in &seen {
        let rows = &by_pid[pid];
        assert_eq!(rows.len(), 1, "one row per query of dig {pid}: {rows:?}");
        let (row_name, row_kind, rcode, row_answers, answered, port) = &rows[0];
        assert_eq!((row_name.as_str(), row_kind.as_str()), (*name, *kind));
        assert_eq!(rcode, status);
        assert!(answered);
        assert_eq!(*port, dns.port);
        let row_answers: Vec<&str> = row_answers.lines().collect();
        assert_eq!(row_answers, *answers, "{name} {kind}");
    }
    let body = tokio::task::spawn_blocking(move || scrape(&metrics))
        .await
        .unwrap();
    assert_eq!(losses(&body), Vec::<&str>::new(), "nothing was lost");
    eprintln!("dns_events: {} queries, one row each", seen.len());
    drop(dns);
    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
}
