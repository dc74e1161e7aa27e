//! `sonde.http_events` of the agent in cluster mode against a real control
//! plane (the e2e harness): the HTTP rows name the pod of each side.
//!
//! Two pods of namespace `shop` on one node, their containers host
//! processes in pod cgroups: `web` runs an HTTP server (Debian's Python),
//! `shopper` a client that, once the agent runs, makes a known set of
//! keep-alive requests to it on loopback (200s from GET and POST, a 404).
//! Every exchange must give exactly one row on each side: the client's
//! rows, with the shopper's pid, are labelled `shop`/`shopper`/`main` and
//! role client, and name the server's port as their remote one; the
//! server's rows, with the web server's pid, are labelled `shop`/`web`/
//! `main` and role server; both sides carry the method, path and status
//! the client made and saw.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

mod common;

use std::time::{Duration, Instant};

use arrow_array::{
    Array, BooleanArray, RecordBatch, StringArray, UInt16Array, UInt32Array, cast::AsArray,
};
use common::{AGENT, AgentProcess, PinnedBinary, rows, scrape};
use e2e::Cluster;

const NODE: &str = "node-a";
const NAMESPACE: &str = "shop";
/// Debian's Python, as in `privileged_http.rs`.
const PYTHON: &str = "/usr/bin/python3";
/// How long the rows of every exchange may take to show up.
const ROWS_WITHIN: Duration = Duration::from_secs(60);

/// The server, on 127.0.0.1 port argv[1]: `GET /size/N` answers N bytes,
/// `GET /status/S` status S, `POST /echo` the request body's length; every
/// answer with a Content-Length, so the connection stays open. Prints
/// "listening" once it accepts connections.
const SERVER: &str = r#"
import http.server, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        kind, value = self.path.strip("/").split("/")
        if kind == "status":
            self.reply(int(value), b"status")
        else:
            self.reply(200, b"x" * int(value))
    def do_POST(self):
        got = len(self.rfile.read(int(self.headers["Content-Length"])))
        self.reply(200, str(got).encode())
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
"#;

/// The client: waits for the file argv[2], then makes every request of
/// argv[3:] ("METHOD path") on one keep-alive connection to 127.0.0.1 port
/// argv[1], printing "method path status" for each, then "done", and holds
/// (the connection open) so the pod stays up.
const CLIENT: &str = r#"
import http.client, os, sys, time
port, go, requests = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while not os.path.exists(go):
    time.sleep(0.05)
conn = http.client.HTTPConnection("127.0.0.1", port)
for request in requests:
    method, path = request.split()
    body = b"z" * 100 if method == "POST" else None
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    print(method, path, response.status, flush=True)
print("done", flush=True)
while True:
    time.sleep(3600)
"#;

/// What the shopper asks for: 25 requests, 24 answered 200 and one 404.
fn requests() -> Vec<String> {
    let mut requests: Vec<String> = (0..21).map(|i| format!("GET /size/{i}")).collect();
    requests.extend((0..3).map(|_| "POST /echo".to_owned()));
    requests.push("GET /status/404".to_owned());
    requests
}

/// One exchange: method, path, status.
type Exchange = (String, String, u16);

/// The exchanges `requests` make, sorted: a multiset.
fn expected(requests: &[String]) -> Vec<Exchange> {
    let mut exchanges: Vec<Exchange> = requests
        .iter()
        .map(|request| {
            let (method, path) = request.split_once(' ').unwrap();
            let status = path
                .strip_prefix("/status/")
                .map_or(200, |s| s.parse().unwrap());
            (method.to_owned(), path.to_owned(), status)
        })
        .collect();
    exchanges.sort();
    exchanges
}

/// A row of `sonde.http_events`, the columns this test checks.
#[derive(Debug)]
struct Row {
    pid: u32,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    role: String,
    exchange: Exchange,
    complete: bool,
    local_port: Option<u16>,
    remote_port: Option<u16>,
}

fn http_rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let s = |name: &str| -> &StringArray { b.column_by_name(name).unwrap().as_string() };
        let u16s = |name: &str| -> &UInt16Array { b.column_by_name(name).unwrap().as_primitive() };
        let pid: &UInt32Array = b.column_by_name("pid").unwrap().as_primitive();
        let complete: &BooleanArray = b.column_by_name("complete").unwrap().as_boolean();
        let text = |name: &str, i: usize| {
            let array = s(name);
            (!array.is_null(i)).then(|| array.value(i).to_owned())
        };
        let port = |name: &str, i: usize| {
            let array = u16s(name);
            (!array.is_null(i)).then(|| array.value(i))
        };
        for i in 0..b.num_rows() {
            out.push(Row {
                pid: pid.value(i),
                namespace: text("namespace", i),
                pod: text("pod", i),
                container: text("container", i),
                role: s("trace_role").value(i).to_owned(),
                exchange: (
                    s("req_method").value(i).to_owned(),
                    s("req_path").value(i).to_owned(),
                    u16s("resp_status").value(i),
                ),
                complete: complete.value(i),
                local_port: port("local_port", i),
                remote_port: port("remote_port", i),
            });
        }
    }
    out
}

/// Polls a pod's log until it contains `what`; the log.
async fn wait_for_log(cluster: &Cluster, pod: &str, what: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let log = cluster.pod_log(NAMESPACE, pod, "main")?;
        if log.contains(what) {
            return Ok(log);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "pod {NAMESPACE}/{pod} did not print {what:?}; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every non-zero loss the agent counted for `sonde.http_events`.
fn losses(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| {
            l.starts_with("sonde_baseline_dropped_total{table=\"http_events\"")
                && !l.ends_with(" 0")
        })
        .collect()
}

/// Checks one side's rows: labels, role, exchanges, the server's port.
fn check_side(rows: &[&Row], pod: &str, role: &str, want: &[Exchange], port: u16) {
    for row in rows {
        assert_eq!(
            (
                row.namespace.as_deref(),
                row.pod.as_deref(),
                row.container.as_deref()
            ),
            (Some(NAMESPACE), Some(pod), Some("main")),
            "{role} row labelled with its pod: {row:?}"
        );
        assert_eq!(row.role, role, "{row:?}");
        assert!(row.complete, "{row:?}");
        let service_port = if role == "client" {
            row.remote_port
        } else {
            row.local_port
        };
        assert_eq!(service_port, Some(port), "the server's port: {row:?}");
    }
    let mut got: Vec<Exchange> = rows.iter().map(|r| r.exchange.clone()).collect();
    got.sort();
    assert_eq!(
        got, want,
        "{role}: method, path and status of every exchange"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rows_name_the_pod_of_each_side() -> anyhow::Result<()> {
    e2e::require_root()?;
    anyhow::ensure!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} (Debian's python3) is needed"
    );
    let test_start = Instant::now();
    let agent_binary = PinnedBinary::new(AGENT);
    let cluster = Cluster::builder()
        .manifests(include_str!("../../crds/sonde.dev.yaml"))
        .start()
        .await?;
    cluster.add_node(NODE, &[]).await?;
    cluster.kubectl(&["create", "namespace", NAMESPACE]).await?;

    // Only connections opened after the agent attached are traced: it
    // runs before the pods start.
    let agent = AgentProcess::start_cluster(
        agent_binary.path(),
        cluster.kubeconfig_path(),
        NODE,
        &[
            "--baseline-tables",
            "http_events",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let (url, metrics) = tokio::task::block_in_place(|| {
        agent.expect("cluster agent running", Duration::from_secs(60));
        (
            agent.flight_url(Duration::from_secs(30)),
            agent.metrics_addr(Duration::from_secs(30)),
        )
    });

    // A free loopback port outside the ephemeral range, for the server.
    let port = e2e::free_port()?;
    let port_arg = port.to_string();
    cluster
        .run_pod(
            NAMESPACE,
            e2e::pod("web", NODE, &[PYTHON, "-c", SERVER, &port_arg]),
        )
        .await?;
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    let requests = requests();
    let mut client = vec![PYTHON, "-c", CLIENT, &port_arg, go.to_str().unwrap()];
    client.extend(requests.iter().map(String::as_str));
    cluster
        .run_pod(NAMESPACE, e2e::pod("shopper", NODE, &client))
        .await?;
    let pid_of = |pod: &str| {
        let processes = cluster.pod_processes(NAMESPACE, pod);
        assert_eq!(processes.len(), 1, "{pod}: one container: {processes:?}");
        processes[0].pid
    };
    let (web, shopper) = (pid_of("web"), pid_of("shopper"));
    wait_for_log(&cluster, "web", "listening").await?;
    std::fs::write(&go, "")?;

    // What the client made and saw.
    let log = wait_for_log(&cluster, "shopper", "done").await?;
    let want = expected(&requests);
    let mut seen: Vec<Exchange> = log
        .lines()
        .filter(|l| *l != "done")
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect();
    seen.sort();
    assert_eq!(seen, want, "the client's exchanges:\n{log}");

    // Every exchange, on both sides.
    let start = Instant::now();
    let rows = loop {
        let rows = http_rows(&rows(&url, "sonde.http_events").await);
        let counts = [shopper, web].map(|p| rows.iter().filter(|r| r.pid == p).count());
        if counts.iter().all(|c| *c >= want.len()) {
            break rows;
        }
        if start.elapsed() > ROWS_WITHIN {
            let body = tokio::task::block_in_place(|| scrape(&metrics));
            panic!(
                "rows of the shopper (pid {}) and web (pid {}): {counts:?}, want {} each, \
                 within {ROWS_WITHIN:?}; rows: {rows:#?}\nmetrics:\n{body}",
                shopper,
                web,
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let to_rows = start.elapsed();
    let side = |pid: u32| -> Vec<&Row> { rows.iter().filter(|r| r.pid == pid).collect() };
    check_side(&side(shopper), "shopper", "client", &want, port);
    check_side(&side(web), "web", "server", &want, port);
    let body = tokio::task::block_in_place(|| scrape(&metrics));
    assert_eq!(losses(&body), Vec::<&str>::new(), "nothing was lost");
    eprintln!(
        "http_events: {} exchanges, one row on each side labelled with its pod, all in {to_rows:?} \
         after the client finished",
        want.len()
    );

    let status = tokio::task::block_in_place(|| agent.stop());
    assert!(status.success(), "agent exit status {status}");
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}
