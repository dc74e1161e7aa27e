//! The agent's Arrow Flight endpoint from clients written elsewhere:
//! pyarrow's Flight client and the ADBC Flight SQL driver, from the
//! harness virtualenv. The tables are filled by the test, so every answer
//! is checked against rows it generated.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{collections::BTreeMap, process::Stdio, sync::Arc, time::Duration};

use anyhow::{Context, ensure};
use crds::TableName;
use probe_serve::flight::{
    FlightConfig,
    fixture::{MemorySource, Row, standard_batch, standard_schema},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::oneshot,
};

const TOKEN: &str = "e2e-token";

fn opens() -> TableName {
    TableName::new("shop", "opens")
}

/// 1000 rows, one per millisecond from t = 1 s, over five commands, in
/// batches of 100.
fn generated_rows() -> Vec<Row> {
    (0..1000)
        .map(|i| {
            let comm = ["nginx", "cat", "ls", "python3", "sh"][(i * i % 7 % 5) as usize];
            Row::new(
                1_000_000_000 + i * 1_000_000,
                1000 + i as u32,
                comm,
                &format!("/data/{i}"),
            )
        })
        .collect()
}

struct Agent {
    port: u16,
    source: Arc<MemorySource>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), probe_serve::flight::FlightError>>,
}

impl Agent {
    async fn start(query_memory_limit: usize) -> anyhow::Result<Self> {
        let source = Arc::new(MemorySource::new());
        source.add_table(opens(), standard_schema());
        source.add_table(TableName::new("sonde", "probe_status"), standard_schema());
        for chunk in generated_rows().chunks(100) {
            ensure!(source.append(&opens(), standard_batch(chunk)?));
        }
        let mut config = FlightConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(TOKEN.to_owned());
        config.query_memory_limit = query_memory_limit;
        let server = probe_serve::flight::bind(source.clone(), config).await?;
        let port = server.local_addr().port();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            port,
            source,
            shutdown: Some(tx),
            task,
        })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().context("stopped twice")?.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

/// Shared by every script: `uri`, `token`, and `call_options()`.
const PRELUDE: &str = r#"
import json, os, sys
import pyarrow as pa
import pyarrow.flight as flight
uri = "grpc://127.0.0.1:" + os.environ["SONDE_PORT"]
token = os.environ["SONDE_TOKEN"]
def call_options(t=None):
    return flight.FlightCallOptions(headers=[(b"authorization", b"Bearer " + (t or token).encode())])
def rows(table):
    out = table.to_pydict()
    for k, v in out.items():
        out[k] = [x.value if hasattr(x, "value") else (int(x.timestamp() * 1e9) if hasattr(x, "timestamp") else x) for x in v]
    return out
"#;

/// Runs a Python script with the venv's interpreter and parses the JSON it
/// prints last.
async fn python(agent: &Agent, script: &str) -> anyhow::Result<Value> {
    python_on(agent.port, script).await
}

async fn python_on(port: u16, script: &str) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(e2e::python()?)
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .env("SONDE_PORT", port.to_string())
        .env("SONDE_TOKEN", TOKEN)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "python failed: {stderr}\n{stdout}");
    let last = stdout.lines().last().context("python printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("not JSON: {last}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_lists_tables_and_reads_a_time_range_with_a_column_subset() -> anyhow::Result<()> {
    let agent = Agent::start(64 << 20).await?;
    let since = 1_200_000_000i64;
    let until = 1_300_000_000i64;
    let answer = python(
        &agent,
        &format!(
            r#"
client = flight.connect(uri)
opts = call_options()
flights = [
    {{"path": [p.decode() for p in f.descriptor.path], "rows": f.total_records,
      "columns": f.schema.names}}
    for f in client.list_flights(options=opts)
]
ticket = json.dumps({{"table": "shop.opens", "columns": ["time_", "pid", "comm"],
                      "since": {since}, "until": "1970-01-01T00:00:01.3Z"}})
table = client.do_get(flight.Ticket(ticket), options=opts).read_all()
info = client.get_flight_info(flight.FlightDescriptor.for_path("shop", "opens"), options=opts)
schema = client.get_schema(flight.FlightDescriptor.for_path("shop", "opens"), options=opts).schema
print(json.dumps({{"flights": flights, "names": table.schema.names,
                   "time_type": str(table.schema.field("time_").type),
                   "rows": rows(table), "info_rows": info.total_records,
                   "schema": schema.names}}))
"#
        ),
    )
    .await?;

    assert_eq!(
        answer["flights"],
        json!([
            {"path": ["shop", "opens"], "rows": 1000,
             "columns": ["time_", "node", "pid", "tid", "comm", "cgroup_id", "namespace", "pod", "container", "path", "flags"]},
            {"path": ["sonde", "probe_status"], "rows": 0,
             "columns": ["time_", "node", "pid", "tid", "comm", "cgroup_id", "namespace", "pod", "container", "path", "flags"]},
        ])
    );
    assert_eq!(answer["names"], json!(["time_", "pid", "comm"]));
    assert_eq!(answer["time_type"], "timestamp[ns, tz=UTC]");
    assert_eq!(answer["info_rows"], 1000);
    assert_eq!(answer["schema"][0], "time_");
    let all = generated_rows();
    let expected: Vec<&Row> = all
        .iter()
        .filter(|r| r.time >= since && r.time < until)
        .collect();
    assert_eq!(expected.len(), 100);
    assert_eq!(
        answer["rows"]["time_"],
        json!(expected.iter().map(|r| r.time).collect::<Vec<_>>())
    );
    assert_eq!(
        answer["rows"]["pid"],
        json!(expected.iter().map(|r| r.pid).collect::<Vec<_>>())
    );
    assert_eq!(
        answer["rows"]["comm"],
        json!(expected.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>())
    );
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_group_by_matches_the_generated_rows() -> anyhow::Result<()> {
    let agent = Agent::start(64 << 20).await?;
    let answer = python(
        &agent,
        r#"
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_flightsql as fsql
conn = dbapi.connect(uri, db_kwargs={fsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token})
cur = conn.cursor()
cur.execute("SELECT comm, count(*) AS n FROM shop.opens WHERE pid >= 1100 GROUP BY comm ORDER BY comm")
counts = [[c, n] for c, n in cur.fetchall()]
cur.adbc_prepare("SELECT max(pid) AS top FROM shop.opens WHERE comm = 'sh'")
cur.execute("SELECT max(pid) AS top FROM shop.opens WHERE comm = 'sh'")
top = cur.fetchone()[0]
objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = sorted(
    f"{s['db_schema_name']}.{t['table_name']}"
    for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]
)
schema = conn.adbc_get_table_schema("opens", db_schema_filter="shop")
info = conn.adbc_get_info()
cur.close()
conn.close()
print(json.dumps({"counts": counts, "top": top, "catalogs": [c["catalog_name"] for c in objects],
                  "tables": tables, "schema": schema.names,
                  "vendor": info.get("vendor_name"), "version": info.get("vendor_version")}))
"#,
    )
    .await?;

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for row in generated_rows().iter().filter(|r| r.pid >= 1100) {
        *expected.entry(row.comm.clone()).or_default() += 1;
    }
    let expected: Vec<Value> = expected.into_iter().map(|(c, n)| json!([c, n])).collect();
    assert_eq!(answer["counts"], json!(expected));
    let top = generated_rows()
        .iter()
        .filter(|r| r.comm == "sh")
        .map(|r| r.pid)
        .max();
    assert_eq!(answer["top"], json!(top));
    assert_eq!(answer["catalogs"], json!(["sonde"]));
    assert_eq!(
        answer["tables"],
        json!(["shop.opens", "sonde.probe_status"])
    );
    assert_eq!(answer["schema"][4], "comm");
    assert_eq!(answer["vendor"], "sonde");
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_follow_gets_a_new_row_within_a_second() -> anyhow::Result<()> {
    let agent = Agent::start(64 << 20).await?;
    let script = format!(
        r#"{PRELUDE}
client = flight.connect(uri)
ticket = json.dumps({{"table": "shop.opens", "columns": ["time_", "path"],
                      "since": 1999000000, "follow": True}})
reader = client.do_get(flight.Ticket(ticket), options=call_options())
first = reader.read_chunk().data
print(json.dumps({{"snapshot": first.column(1).to_pylist()}}), flush=True)
while True:
    chunk = reader.read_chunk().data
    if chunk.num_rows:
        print(json.dumps({{"followed": chunk.column(1).to_pylist()}}), flush=True)
        break
"#
    );
    let mut child = tokio::process::Command::new(e2e::python()?)
        .arg("-c")
        .arg(script)
        .env("SONDE_PORT", agent.port.to_string())
        .env("SONDE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("python ended before the snapshot")?;
    assert_eq!(
        serde_json::from_str::<Value>(&line)?,
        json!({"snapshot": ["/data/999"]})
    );
    ensure!(agent.source.followers(&opens()) == 1, "not following");

    let appended = tokio::time::Instant::now();
    let row = Row::new(5_000_000_000, 1, "new", "/appended");
    ensure!(agent.source.append(&opens(), standard_batch(&[row])?));
    let line = tokio::time::timeout(Duration::from_secs(1), lines.next_line())
        .await
        .context("no followed row within 1 s")??
        .context("python ended before the followed row")?;
    let latency = appended.elapsed();
    assert_eq!(
        serde_json::from_str::<Value>(&line)?,
        json!({"followed": ["/appended"]})
    );
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    eprintln!("follow latency through pyarrow: {latency:?}");

    // The client exits; its subscription goes with it.
    child.wait().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agent.source.followers(&opens()) > 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "follower left behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_statuses_and_the_server_keeps_serving() -> anyhow::Result<()> {
    // A budget small queries fit in but a sort of every row of `shop.big`
    // does not.
    let agent = Agent::start(1 << 20).await?;
    let big = TableName::new("shop", "big");
    agent.source.add_table(big.clone(), standard_schema());
    for chunk in 0..20 {
        let rows: Vec<Row> = (0..5_000)
            .map(|i| {
                let n = chunk * 5_000 + i;
                Row::new(
                    n,
                    n as u32,
                    &format!("comm-{n}"),
                    &format!("/a/long/path/{n:010}"),
                )
            })
            .collect();
        ensure!(agent.source.append(&big, standard_batch(&rows)?));
    }
    let answer = python(
        &agent,
        r#"
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_flightsql as fsql
client = flight.connect(uri)
def attempt(f):
    try:
        f()
        return {"ok": True}
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
def get(ticket, t=None):
    return lambda: client.do_get(flight.Ticket(ticket), options=call_options(t)).read_all()
def sql(query):
    def run():
        with dbapi.connect(uri, db_kwargs={fsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token}) as conn:
            with conn.cursor() as cur:
                cur.execute(query)
                cur.fetchall()
    return run
results = {
    "unknown_table": attempt(get('{"table": "shop.nope"}')),
    "bad_json": attempt(get('{"table": "shop.opens"')),
    "unknown_column": attempt(get('{"table": "shop.opens", "columns": ["nope"]}')),
    "wrong_token": attempt(get('{"table": "shop.opens"}', "wrong")),
    "invalid_sql": attempt(sql("SELEC comm FROM shop.opens")),
    "unknown_sql_table": attempt(sql("SELECT * FROM shop.nope")),
    "over_budget": attempt(sql("SELECT path, comm, pid FROM shop.big ORDER BY path DESC")),
}
# And everything still works afterwards, for a fresh client too.
after = flight.connect(uri).do_get(flight.Ticket('{"table": "shop.opens", "limit": 3}'), options=call_options()).read_all()
with dbapi.connect(uri, db_kwargs={fsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.opens")
        count = cur.fetchone()[0]
results["after"] = {"rows": after.num_rows, "count": count}
print(json.dumps(results))
"#,
    )
    .await?;
    eprintln!("{}", serde_json::to_string_pretty(&answer)?);

    let check = |case: &str, kind: &str, texts: &[&str]| {
        let result = &answer[case];
        assert_eq!(result["type"], kind, "{case}: {result}");
        let message = result["message"].as_str().unwrap_or_default();
        for text in texts {
            assert!(message.contains(text), "{case}: {text:?} not in {message}");
        }
    };
    // pyarrow puts the gRPC code and message in its exception's text and
    // maps the code to an exception type; ADBC ends its message with the
    // gRPC code and the call that failed.
    check(
        "unknown_table",
        "ArrowKeyError",
        &["NOT_FOUND:no table shop.nope"],
    );
    check(
        "bad_json",
        "ArrowInvalid",
        &["INVALID_ARGUMENT:ticket is not valid JSON for a table read"],
    );
    check(
        "unknown_column",
        "ArrowInvalid",
        &["INVALID_ARGUMENT:table shop.opens has no column \"nope\""],
    );
    check(
        "wrong_token",
        "FlightUnauthenticatedError",
        &["UNAUTHENTICATED:invalid bearer token"],
    );
    check(
        "invalid_sql",
        "ProgrammingError",
        &["SQL: SQL error: ParserError", "(InvalidArgument; Prepare)"],
    );
    check(
        "unknown_sql_table",
        "ProgrammingError",
        &["SQL: no table shop.nope (NotFound; Prepare)"],
    );
    check(
        "over_budget",
        "InternalError",
        &[
            "query exceeded its memory budget of 1048576 bytes",
            "(ResourceExhausted; DoGet",
        ],
    );
    assert_eq!(answer["after"], json!({"rows": 3, "count": 1000}));
    agent.stop().await
}

/// The generated rows in the real table store, every one of them in
/// compressed cold batches, served the way the agent serves them.
struct CompressedAgent {
    port: u16,
    store: probe_store::TableStore,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), probe_serve::flight::FlightError>>,
}

impl CompressedAgent {
    async fn start() -> anyhow::Result<Self> {
        use probe_store::{Compaction, RetentionPolicy, StoreConfig, TableStore};
        let store = TableStore::new(StoreConfig {
            // The rows are from 1970: no age limit.
            default_policy: RetentionPolicy::UNBOUNDED,
            compaction: Some(Compaction {
                cold_after: Duration::ZERO,
                merge_for: Duration::ZERO,
                max_rows: 256,
                ..Compaction::default()
            }),
            ..StoreConfig::default()
        });
        store.create_table(opens(), standard_schema())?;
        store.create_table(TableName::new("sonde", "probe_status"), standard_schema())?;
        for chunk in generated_rows().chunks(100) {
            store.append(&opens(), standard_batch(chunk)?)?;
        }
        let done = store.compact();
        let stats = store.table_stats(&opens()).context("no table")?;
        ensure!(
            done.failures == 0 && stats.batches == stats.cold_batches && stats.cold_batches >= 4,
            "not all compressed: {done:?} {stats:?}"
        );
        ensure!(stats.bytes * 3 < stats.plain_bytes, "{stats:?}");
        let mut config = FlightConfig::new("127.0.0.1:0".parse()?);
        config.token = Some(TOKEN.to_owned());
        let server = probe_serve::flight::bind(Arc::new(store.clone()), config).await?;
        let port = server.local_addr().port();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            port,
            store,
            shutdown: Some(tx),
            task,
        })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().context("stopped twice")?.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_tables_read_the_same_from_pyarrow_and_adbc() -> anyhow::Result<()> {
    let agent = CompressedAgent::start().await?;
    let since = 1_200_000_000i64;
    let until = 1_300_000_000i64;
    let answer = python_on(
        agent.port,
        &format!(
            r#"
import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_flightsql as fsql
client = flight.connect(uri)
opts = call_options()
ticket = json.dumps({{"table": "shop.opens", "columns": ["time_", "pid", "comm"],
                      "since": {since}, "until": {until}}})
table = client.do_get(flight.Ticket(ticket), options=opts).read_all()
dense = json.dumps({{"table": "shop.opens", "dictionary": True}})
dense = client.do_get(flight.Ticket(dense), options=opts).read_all()
conn = dbapi.connect(uri, db_kwargs={{fsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token}})
cur = conn.cursor()
cur.execute("SELECT comm, count(*) AS n, max(pid) AS top FROM shop.opens WHERE pid >= 1100 AND path LIKE '/data/%' GROUP BY comm ORDER BY comm")
counts = [list(r) for r in cur.fetchall()]
cur.execute("SELECT arrow_cast(pod, 'Dictionary(Int32, Utf8)') AS pod, count(*) AS n FROM shop.opens GROUP BY pod")
pods = cur.fetch_arrow_table()
cur.close()
conn.close()
print(json.dumps({{"names": table.schema.names, "rows": rows(table),
                   "comm_type": str(table.schema.field("comm").type),
                   "dense_comm_type": str(dense.schema.field("comm").type),
                   "dense_comms": dense.column("comm").to_pylist(),
                   "dense_paths": dense.column("path").to_pylist(),
                   "counts": counts,
                   "pod_type": str(pods.schema.field("pod").type),
                   "pods": pods.to_pylist()}}))
"#
        ),
    )
    .await?;

    let all = generated_rows();
    let expected: Vec<&Row> = all
        .iter()
        .filter(|r| r.time >= since && r.time < until)
        .collect();
    assert_eq!(answer["names"], json!(["time_", "pid", "comm"]));
    assert_eq!(
        answer["rows"]["time_"],
        json!(expected.iter().map(|r| r.time).collect::<Vec<_>>())
    );
    assert_eq!(
        answer["rows"]["pid"],
        json!(expected.iter().map(|r| r.pid).collect::<Vec<_>>())
    );
    assert_eq!(
        answer["rows"]["comm"],
        json!(expected.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>())
    );
    // Plain by default; dictionaries when the ticket asks, same values.
    assert_eq!(answer["comm_type"], "string");
    assert_eq!(
        answer["dense_comm_type"],
        "dictionary<values=string, indices=int32, ordered=0>"
    );
    assert_eq!(
        answer["dense_comms"],
        json!(all.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(
        answer["dense_paths"],
        json!(all.iter().map(|r| r.path.as_str()).collect::<Vec<_>>())
    );
    // Flight SQL filters and aggregates over decoded cold batches.
    let mut expected: BTreeMap<String, (i64, u32)> = BTreeMap::new();
    for row in all.iter().filter(|r| r.pid >= 1100) {
        let entry = expected.entry(row.comm.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(row.pid);
    }
    let expected: Vec<Value> = expected
        .into_iter()
        .map(|(c, (n, top))| json!([c, n, top]))
        .collect();
    assert_eq!(answer["counts"], json!(expected));
    assert_eq!(
        answer["pod_type"],
        "dictionary<values=string, indices=int32, ordered=0>"
    );
    assert_eq!(answer["pods"], json!([{"pod": "web-0", "n": 1000}]));
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_follows_a_compressed_table() -> anyhow::Result<()> {
    let agent = CompressedAgent::start().await?;
    let script = format!(
        r#"{PRELUDE}
client = flight.connect(uri)
ticket = json.dumps({{"table": "shop.opens", "columns": ["time_", "path"],
                      "since": 1990000000, "follow": True}})
reader = client.do_get(flight.Ticket(ticket), options=call_options())
first = reader.read_chunk().data
print(json.dumps({{"snapshot": first.column(1).to_pylist()}}), flush=True)
while True:
    chunk = reader.read_chunk().data
    if chunk.num_rows:
        print(json.dumps({{"followed": chunk.column(1).to_pylist()}}), flush=True)
        break
"#
    );
    let mut child = tokio::process::Command::new(e2e::python()?)
        .arg("-c")
        .arg(script)
        .env("SONDE_PORT", agent.port.to_string())
        .env("SONDE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("python ended before the snapshot")?;
    // The snapshot came from a cold batch; the stream subscribed before it.
    assert_eq!(
        serde_json::from_str::<Value>(&line)?,
        json!({"snapshot": (990..1000).map(|i| format!("/data/{i}")).collect::<Vec<_>>()})
    );
    let row = Row::new(5_000_000_000, 1, "new", "/appended");
    agent.store.append(&opens(), standard_batch(&[row])?)?;
    // A compaction pass meanwhile does not disturb the follower.
    agent.store.compact();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("no followed row within 10 s")??
        .context("python ended before the followed row")?;
    assert_eq!(
        serde_json::from_str::<Value>(&line)?,
        json!({"followed": ["/appended"]})
    );
    child.wait().await?;
    let stats = agent.store.table_stats(&opens()).context("no table")?;
    // A one-row batch compresses to no less than it holds: it stays hot.
    assert_eq!(stats.rows, 1001);
    assert_eq!((stats.batches, stats.cold_batches), (6, 5));
    agent.stop().await
}
