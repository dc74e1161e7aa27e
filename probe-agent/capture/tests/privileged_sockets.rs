//! Privileged tests of the socket programs on this kernel: a real HTTP
//! server and client (Debian's Python, which links the system's OpenSSL)
//! on loopback, every call they make seen in order, HTTP bytes copied and
//! other protocols only counted. They need root (or CAP_BPF, CAP_PERFMON
//! and CAP_SYS_ADMIN for the uprobes) and fail, naming what is missing,
//! without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use probe_capture::{
    loader::{LoadOptions, ProbeSet},
    preflight,
    sockets::{SockEvent, SocketOptions, SocketTrace, attach_openssl},
    tracefs::Tracefs,
};
use probe_common::sock;

/// Debian's Python: its `ssl` module uses the system's `libssl.so.3`.
const PYTHON: &str = "/usr/bin/python3";
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

const SERVER: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = int(self.path.strip("/"))
        body = b"x" * n
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 1:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

const CLIENT: &str = r#"
import http.client, ssl, sys
port, tls, sizes = int(sys.argv[1]), sys.argv[2] == "tls", sys.argv[3:]
if tls:
    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
else:
    conn = http.client.HTTPConnection("127.0.0.1", port)
for n in sizes:
    conn.request("GET", "/" + n)
    response = conn.getresponse()
    assert len(response.read()) == int(n)
conn.close()
"#;

/// A TCP stream that is not HTTP: a sink server and a client that sends
/// `count` bytes.
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

fn load() -> ProbeSet {
    if let Err(e) = preflight::check_privileges() {
        panic!("this test loads eBPF programs and cannot run here: {e}");
    }
    let tracefs = Tracefs::locate(None).expect("tracefs mounted (scripts/install.sh mounts it)");
    ProbeSet::load(tracefs, LoadOptions::default()).expect("eBPF object loads")
}

/// A server process the test started and its port; killed when dropped.
struct Server(Child, u16);

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
            .expect("the server prints its port");
        let port = line.trim().parse().expect("a port");
        Self(child, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(script: &str, args: &[&str]) -> u32 {
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .args(args)
        .spawn()
        .expect("start Python");
    let pid = child.id();
    let status = child.wait().expect("wait for Python");
    assert!(status.success(), "{script} failed: {status}");
    pid
}

/// What one connection showed, per direction.
#[derive(Debug, Default)]
struct Conn {
    pid: u32,
    role: u8,
    opened: bool,
    peer: Option<std::net::SocketAddr>,
    closed: Option<(u64, u64)>,
    /// Per direction: bytes seen (by the stream totals), bytes copied, the
    /// copied bytes in order, and stream positions that did not follow on.
    seen: [u64; 2],
    copied: [Vec<u8>; 2],
    discontinuities: u64,
    tls: bool,
}

#[derive(Default)]
struct Seen {
    conns: HashMap<u64, Conn>,
}

impl Seen {
    fn event(&mut self, event: &SockEvent<'_>) {
        let r = &event.record;
        let conn = self.conns.entry(r.conn_id).or_default();
        conn.pid = event.pid();
        conn.role = r.role;
        match r.header.kind {
            sock::KIND_OPEN => {
                conn.opened = true;
                conn.peer = event.peer();
            }
            sock::KIND_CLOSE => conn.closed = Some((r.bytes_sent, r.bytes_recv)),
            sock::KIND_DATA => {
                let d = usize::from(r.direction);
                let total = if r.direction == sock::EGRESS {
                    r.bytes_sent
                } else {
                    r.bytes_recv
                };
                conn.tls |= r.tls == 1;
                if r.offset == 0 {
                    if total - u64::from(r.call_len) != conn.seen[d] {
                        conn.discontinuities += 1;
                    }
                    conn.seen[d] = total;
                }
                conn.copied[d].extend_from_slice(event.data);
            }
            kind => panic!("unknown record kind {kind}"),
        }
    }

    fn of(&self, pid: u32) -> BTreeMap<u64, &Conn> {
        self.conns
            .iter()
            .filter(|(_, c)| c.pid == pid)
            .map(|(id, c)| (*id, c))
            .collect()
    }
}

fn drain_until(trace: &mut SocketTrace, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        trace.drain(|e| seen.event(e));
        if done(seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the records did not arrive in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn expected_bodies(sizes: &[&str]) -> u64 {
    sizes.iter().map(|n| n.parse::<u64>().unwrap()).sum()
}

#[test]
fn http_calls_are_copied_in_order_and_other_streams_only_counted() {
    let mut set = load();
    let mut trace = SocketTrace::attach(&mut set, std::process::id(), SocketOptions::default())
        .expect("attach the socket programs");
    let server = Server::start(&[]);
    let port = server.1.to_string();
    let sizes = ["0", "10", "5000", "70000"];
    let mut args = vec![port.as_str(), "plain"];
    args.extend(sizes);
    let client = run(CLIENT, &args);
    let raw = run(RAW, &["100000"]);

    let mut seen = Seen::default();
    drain_until(&mut trace, &mut seen, |s| {
        s.of(client).values().any(|c| c.closed.is_some())
            && s.of(raw).values().filter(|c| c.closed.is_some()).count() == 2
    });
    let clients = seen.of(client);
    assert_eq!(clients.len(), 1, "one keep-alive connection: {clients:?}");
    let conn = clients.values().next().unwrap();
    assert!(conn.opened);
    assert_eq!(conn.role, sock::ROLE_CLIENT);
    assert_eq!(conn.peer, Some(([127, 0, 0, 1], server.1).into()));
    let (sent, received) = conn.closed.unwrap();
    assert_eq!(conn.seen, [sent, received], "every call seen");
    assert_eq!(conn.discontinuities, 0);
    let requests = String::from_utf8_lossy(&conn.copied[0]);
    assert_eq!(requests.matches("GET /").count(), sizes.len(), "{requests}");
    assert_eq!(
        conn.copied[0].len() as u64,
        sent,
        "requests are copied whole"
    );
    let responses = &conn.copied[1];
    assert!(responses.starts_with(b"HTTP/1.0 200") || responses.starts_with(b"HTTP/1.1 200"));
    assert!(received > expected_bodies(&sizes));

    let servers = seen.of(server.0.id());
    assert_eq!(servers.len(), 1, "{servers:?}");
    let side = servers.values().next().unwrap();
    assert_eq!(side.role, sock::ROLE_SERVER);
    let peer = side.peer.expect("accept names the peer");
    assert!(peer.ip().is_loopback() && peer.port() != server.1, "{peer}");
    assert!(side.copied[1].starts_with(b"GET /0 HTTP/1.1"));
    assert_eq!(side.seen[1], sent, "the server read what the client sent");

    let raws = seen.of(raw);
    assert_eq!(raws.len(), 2, "the raw stream's two ends: {raws:?}");
    for conn in raws.values() {
        assert!(
            conn.copied.iter().all(Vec::is_empty),
            "not HTTP: nothing copied"
        );
        let (sent, received) = conn.closed.unwrap();
        assert_eq!(sent + received, 100_000, "counted without copying");
    }
    let counters = trace.counters();
    assert_eq!(counters.ring_full, 0);
}

#[test]
fn tls_plaintext_is_attributed_to_its_connection() {
    assert!(
        Path::new(LIBSSL).exists(),
        "{LIBSSL} is needed (Debian's libssl3)"
    );
    let dir = std::env::temp_dir().join(format!("sonde-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
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

    let mut set = load();
    let mut trace = SocketTrace::attach(&mut set, std::process::id(), SocketOptions::default())
        .expect("attach the socket programs");
    // Kept until the end: through tracefs, dropping them detaches.
    let _links = attach_openssl(&mut set, Path::new(LIBSSL)).expect("attach to OpenSSL");
    let server = Server::start(&[cert.to_str().unwrap(), key.to_str().unwrap()]);
    let port = server.1.to_string();
    let sizes = ["3", "20000"];
    let mut args = vec![port.as_str(), "tls"];
    args.extend(sizes);
    let client = run(CLIENT, &args);
    let mut seen = Seen::default();
    drain_until(&mut trace, &mut seen, |s| {
        s.of(client).values().any(|c| c.closed.is_some())
    });
    let clients = seen.of(client);
    assert_eq!(clients.len(), 1, "{clients:?}");
    let conn = clients.values().next().unwrap();
    assert!(conn.tls, "plaintext came through the TLS probes");
    let requests = String::from_utf8_lossy(&conn.copied[0]);
    assert_eq!(requests.matches("GET /").count(), 2, "{requests}");
    assert!(
        conn.copied[1].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &conn.copied[1][..20.min(conn.copied[1].len())]
    );
    let servers = seen.of(server.0.id());
    let side = servers.values().next().expect("the server's connection");
    assert!(side.copied[1].starts_with(b"GET /3 HTTP/1.1"));
    assert_eq!(trace.counters().tls_no_socket, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resolvers_dns_datagrams_are_copied_whole() {
    let mut set = load();
    let mut trace = SocketTrace::attach(&mut set, std::process::id(), SocketOptions::default())
        .expect("attach the socket programs");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Killed when dropped, failed assertions included.
    let dnsmasq = Command::new("dnsmasq")
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
        .args(["--no-hosts", "--host-record=www.example.test,127.0.0.8"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (scripts/install-harness.sh installs dnsmasq-base)");
    let dnsmasq = Server(dnsmasq, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let dig = loop {
        let child = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=1"])
            .arg("www.example.test")
            .stdout(Stdio::null())
            .spawn()
            .expect("run dig");
        let pid = child.id();
        if child.wait_with_output().unwrap().status.success() {
            break pid;
        }
        assert!(Instant::now() < deadline, "dnsmasq did not answer");
    };
    let mut seen = Seen::default();
    drain_until(&mut trace, &mut seen, |s| {
        s.of(dig).values().any(|c| !c.copied[1].is_empty())
    });
    drop(dnsmasq);
    let conns = seen.of(dig);
    let conn = conns.values().find(|c| !c.copied[1].is_empty()).unwrap();
    assert_eq!(conn.role, sock::ROLE_CLIENT);
    assert_eq!(conn.peer, Some(([127, 0, 0, 1], port).into()));
    // The query: one question for www.example.test; the response: QR set.
    assert!(conn.copied[0].windows(7).any(|w| w == b"example"));
    assert_eq!(conn.copied[1][2] & 0x80, 0x80, "a response");
    assert_eq!(u64::try_from(conn.copied[0].len()).unwrap(), conn.seen[0]);
    assert_eq!(u64::try_from(conn.copied[1].len()).unwrap(), conn.seen[1]);
}
