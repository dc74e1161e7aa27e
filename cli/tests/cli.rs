//! The CLI against a real Flight endpoint on loopback.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{sync::Arc, time::Duration};

use arrow_array::{RecordBatch, cast::AsArray, types::Int64Type};
use clap::Parser;
use crds::TableName;
use probe_serve::flight::{
    FlightConfig,
    fixture::{MemorySource, Row, standard_batch, standard_schema},
};
use tokio::sync::oneshot;

struct Agent {
    addr: String,
    source: Arc<MemorySource>,
    _shutdown: oneshot::Sender<()>,
}

async fn agent(token: Option<&str>) -> Agent {
    let source = Arc::new(MemorySource::new());
    let opens = TableName::new("shop", "opens");
    source.add_table(opens.clone(), standard_schema());
    let rows: Vec<Row> = (1..=6)
        .map(|i| {
            Row::new(
                i * 1_000_000_000,
                i as u32,
                ["cat", "ls"][i as usize % 2],
                "/etc/hosts",
            )
        })
        .collect();
    assert!(source.append(&opens, standard_batch(&rows).unwrap()));
    let mut config = FlightConfig::new("127.0.0.1:0".parse().unwrap());
    config.token = token.map(str::to_owned);
    let server = probe_serve::flight::bind(source.clone(), config)
        .await
        .unwrap();
    let addr = format!("http://{}", server.local_addr());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Agent {
        addr,
        source,
        _shutdown: tx,
    }
}

async fn sonde(args: &[&str]) -> Result<String, cli::CliError> {
    let cli =
        cli::Cli::try_parse_from(std::iter::once("sonde").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn tables_lists_every_table() {
    let agent = agent(None).await;
    let out = sonde(&["--addr", &agent.addr, "tables"]).await.unwrap();
    assert!(out.contains("| shop.opens |"), "{out}");
    assert!(out.contains("| 6 "), "{out}");
    let out = sonde(&["--addr", &agent.addr, "--output", "csv", "tables"])
        .await
        .unwrap();
    assert!(
        out.starts_with("table,rows,bytes,columns\nshop.opens,6,"),
        "{out}"
    );
}

#[tokio::test]
async fn query_prints_results_in_every_format() {
    let agent = agent(Some("t0ken")).await;
    let sql = "SELECT comm, count(*) AS n FROM shop.opens GROUP BY comm ORDER BY comm";
    let base = ["--addr", agent.addr.as_str(), "--token", "t0ken"];

    let out = sonde(&[&base[..], &["query", sql]].concat()).await.unwrap();
    assert!(out.contains("| cat  | 3 |"), "{out}");
    assert!(out.contains("| ls   | 3 |"), "{out}");

    let out = sonde(&[&base[..], &["-o", "csv", "query", sql]].concat())
        .await
        .unwrap();
    assert_eq!(out, "comm,n\ncat,3\nls,3\n");

    let out = sonde(&[&base[..], &["-o", "json", "query", sql]].concat())
        .await
        .unwrap();
    assert_eq!(
        out,
        "{\"comm\":\"cat\",\"n\":3}\n{\"comm\":\"ls\",\"n\":3}\n"
    );

    let cli = cli::Cli::try_parse_from([
        "sonde",
        "--addr",
        &agent.addr,
        "--token",
        "t0ken",
        "-o",
        "arrow",
        "query",
        sql,
    ])
    .unwrap();
    let mut out = Vec::new();
    cli::run(cli, &mut out).await.unwrap();
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(out), None).unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    let total: i64 = batches
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, 6);

    // Empty results still print their header.
    let out = sonde(
        &[
            &base[..],
            &[
                "-o",
                "csv",
                "query",
                "SELECT comm FROM shop.opens WHERE pid > 99",
            ],
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(out, "comm\n");
    let out = sonde(
        &[
            &base[..],
            &["query", "SELECT comm FROM shop.opens WHERE pid > 99"],
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert!(out.contains("| comm |"), "{out}");
}

#[tokio::test]
async fn errors_are_one_line_and_precise() {
    let agent = agent(Some("t0ken")).await;
    let error = sonde(&["--addr", &agent.addr, "tables"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Unauthenticated") || error.contains("unauthenticated"),
        "{error}"
    );

    let error = sonde(&[
        "--addr",
        &agent.addr,
        "--token",
        "t0ken",
        "query",
        "SELECT * FROM shop.nope",
    ])
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("SQL: no table shop.nope (NotFound)"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");

    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let error = sonde(&["--addr", &addr, "tables"])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with(&format!("cannot connect to {addr}: ")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test]
async fn tail_prints_new_rows_as_they_arrive() {
    let agent = agent(None).await;
    let opens = TableName::new("shop", "opens");
    let source = Arc::clone(&agent.source);
    let append = tokio::spawn(async move {
        // Wait for the tail to subscribe, then append one row.
        while source.followers(&opens) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let row = Row::new(7_000_000_000, 7, "vim", "/new");
        assert!(source.append(&opens, standard_batch(&[row]).unwrap()));
    });
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        sonde(&[
            "--addr",
            &agent.addr,
            "-o",
            "csv",
            "tail",
            "shop.opens",
            "--columns",
            "pid,path",
            "--since",
            "5000000000",
            "--limit",
            "3",
        ]),
    )
    .await
    .expect("tail ends at its limit")
    .unwrap();
    append.await.unwrap();
    assert_eq!(out, "pid,path\n5,/etc/hosts\n6,/etc/hosts\n7,/new\n");
}

#[test]
fn the_binary_reports_a_refused_connection_on_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["tables"])
        .env("SONDE_ADDR", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "sonde: cannot connect to http://127.0.0.1:{port}: "
        )),
        "{stderr}"
    );
}
