//! The endpoint over a real gRPC connection on loopback, with the Rust
//! Flight client and an in-memory source.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{sync::Arc, time::Duration};

use arrow_array::{
    Array, RecordBatch, StringArray,
    cast::AsArray,
    types::{Int64Type, TimestampNanosecondType, UInt32Type},
};
use arrow_flight::{
    FlightClient, FlightDescriptor, FlightInfo, Ticket,
    error::FlightError as ArrowFlightError,
    sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
        CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTables,
        CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo,
    },
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, transport::Channel};

use super::{
    FlightConfig, FlightError,
    fixture::{MemorySource, Row, standard_batch, standard_schema},
    table::read_table,
};
use probe_store::{
    Compaction, ManualClock, RetentionPolicy, StoreConfig, TableName, TableSource, TableStore,
};

fn opens() -> TableName {
    TableName::new("shop", "opens")
}

/// 30 rows at t = 1..=30 s over three commands, in three batches.
fn rows() -> Vec<Row> {
    (1..=30)
        .map(|i| {
            let comm = ["cat", "ls", "nginx"][i as usize % 3];
            Row::new(i * 1_000_000_000, 100 + i as u32, comm, &format!("/f{i}"))
        })
        .collect()
}

fn source_with_rows() -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::new());
    source.add_table(opens(), standard_schema());
    source.add_table(TableName::new("sonde", "probe_status"), standard_schema());
    for chunk in rows().chunks(10) {
        assert!(source.append(&opens(), standard_batch(chunk).unwrap()));
    }
    source
}

struct TestServer {
    addr: std::net::SocketAddr,
    metrics: super::FlightMetrics,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), FlightError>>,
}

impl TestServer {
    async fn start(
        source: Arc<impl TableSource>,
        configure: impl FnOnce(&mut FlightConfig),
    ) -> Self {
        let mut config = FlightConfig::new("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let server = super::bind(source, config).await.unwrap();
        let addr = server.local_addr();
        let metrics = server.metrics();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics,
            shutdown: Some(tx),
            task,
        }
    }

    async fn client(&self) -> FlightClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        FlightClient::new(channel)
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

fn code(error: ArrowFlightError) -> (Code, String) {
    match error {
        ArrowFlightError::Tonic(status) => (status.code(), status.message().to_owned()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn do_get(
    client: &mut FlightClient,
    ticket: &str,
) -> Result<Vec<RecordBatch>, (Code, String)> {
    let stream = client
        .do_get(Ticket::new(ticket.to_owned()))
        .await
        .map_err(code)?;
    stream.try_collect().await.map_err(code)
}

fn times(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("time_")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .collect()
}

fn sql_descriptor(query: &str) -> FlightDescriptor {
    let command = CommandStatementQuery {
        query: query.to_owned(),
        transaction_id: None,
    };
    FlightDescriptor::new_cmd(command.as_any().encode_to_vec())
}

async fn sql(client: &mut FlightClient, query: &str) -> Result<Vec<RecordBatch>, (Code, String)> {
    let info = client
        .get_flight_info(sql_descriptor(query))
        .await
        .map_err(code)?;
    fetch(client, &info).await
}

async fn fetch(
    client: &mut FlightClient,
    info: &FlightInfo,
) -> Result<Vec<RecordBatch>, (Code, String)> {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stream = client.do_get(ticket).await.map_err(code)?;
    stream.try_collect().await.map_err(code)
}

#[tokio::test]
async fn lists_one_flight_per_table_with_schema_and_counts() {
    let source = source_with_rows();
    let server = TestServer::start(Arc::clone(&source), |_| {}).await;
    let mut client = server.client().await;
    let infos: Vec<FlightInfo> = client
        .list_flights(Vec::<u8>::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let paths: Vec<Vec<String>> = infos
        .iter()
        .map(|i| i.flight_descriptor.clone().unwrap().path)
        .collect();
    assert_eq!(
        paths,
        [vec!["shop", "opens"], vec!["sonde", "probe_status"]]
    );
    assert_eq!(infos[0].total_records, 30);
    assert!(infos[0].total_bytes > 0);
    assert_eq!(infos[1].total_records, 0);
    assert_eq!(
        infos[0].clone().try_decode_schema().unwrap(),
        *standard_schema()
    );

    // The listed ticket reads the whole table.
    let batches = fetch(&mut client, &infos[0]).await.unwrap();
    assert_eq!(times(&batches).len(), 30);
    server.stop().await;
}

#[tokio::test]
async fn do_get_filters_time_projects_and_limits() {
    let server = TestServer::start(source_with_rows(), |_| {}).await;
    let mut client = server.client().await;

    // [5 s, 15 s): rows 5..=14, across the first two batches.
    let batches = do_get(
        &mut client,
        r#"{"table":"shop.opens","columns":["time_","comm"],"since":5000000000,
            "until":"1970-01-01T00:00:15Z"}"#,
    )
    .await
    .unwrap();
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["time_", "comm"]);
    assert_eq!(
        times(&batches),
        (5..15).map(|s| s * 1_000_000_000).collect::<Vec<_>>()
    );
    let comms: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_string::<i32>()
                .iter()
                .map(|c| c.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = rows()[4..14].iter().map(|r| r.comm.clone()).collect();
    assert_eq!(comms, expected);

    // Limit across batches.
    let batches = do_get(
        &mut client,
        r#"{"table":"shop.opens","since":8000000000,"limit":7}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        times(&batches),
        (8..15).map(|s| s * 1_000_000_000).collect::<Vec<_>>()
    );

    // An empty table still sends its schema.
    let batches = do_get(&mut client, r#"{"table":"sonde.probe_status"}"#)
        .await
        .unwrap();
    assert!(batches.iter().all(|b| b.num_rows() == 0));
    server.stop().await;
}

#[tokio::test]
async fn flight_info_and_schema_by_path_and_by_command() {
    let server = TestServer::start(source_with_rows(), |_| {}).await;
    let mut client = server.client().await;

    let info = client
        .get_flight_info(FlightDescriptor::new_path(vec![
            "shop".into(),
            "opens".into(),
        ]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 30);
    let info = client
        .get_flight_info(FlightDescriptor::new_path(vec!["shop.opens".into()]))
        .await
        .unwrap();
    assert_eq!(info.total_records, 30);

    let command = r#"{"table":"shop.opens","columns":["pid"],"limit":3}"#;
    let info = client
        .get_flight_info(FlightDescriptor::new_cmd(command.to_owned()))
        .await
        .unwrap();
    assert_eq!(info.total_records, -1);
    let batches = fetch(&mut client, &info).await.unwrap();
    let pids: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<UInt32Type>().values().to_vec())
        .collect();
    assert_eq!(pids, [101, 102, 103]);

    let schema = client
        .get_schema(FlightDescriptor::new_cmd(command.to_owned()))
        .await
        .unwrap();
    assert_eq!(schema.fields().len(), 1);
    assert_eq!(schema.field(0).name(), "pid");
    let schema = client
        .get_schema(sql_descriptor(
            "SELECT comm, count(*) AS n FROM shop.opens GROUP BY comm",
        ))
        .await
        .unwrap();
    assert_eq!(schema.field(1).name(), "n");

    let (status, message) = code(
        client
            .get_flight_info(FlightDescriptor::new_path(vec![
                "shop".into(),
                "nope".into(),
            ]))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Code::NotFound, "{message}");
    let (status, message) = code(
        client
            .get_schema(FlightDescriptor::new_path(vec![
                "a".into(),
                "b".into(),
                "c".into(),
            ]))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Code::InvalidArgument, "{message}");
    server.stop().await;
}

#[tokio::test]
async fn bad_tickets_get_precise_statuses_and_the_server_keeps_serving() {
    let server = TestServer::start(source_with_rows(), |_| {}).await;
    let mut client = server.client().await;
    let cases = [
        (
            r#"{"table":"shop.nope"}"#,
            Code::NotFound,
            "no table shop.nope",
        ),
        (r#"{"table":"nope"}"#, Code::InvalidArgument, "schema.table"),
        (
            r#"{"table":"shop.opens""#,
            Code::InvalidArgument,
            "not valid JSON",
        ),
        ("not json at all", Code::InvalidArgument, "not valid JSON"),
        (
            r#"{"table":"shop.opens","columns":["time_","nope"]}"#,
            Code::InvalidArgument,
            "no column \"nope\"",
        ),
        (
            r#"{"table":"shop.opens","since":20,"until":10}"#,
            Code::InvalidArgument,
            "is after `until`",
        ),
        (
            r#"{"table":"shop.opens","limit":0}"#,
            Code::InvalidArgument,
            "at least 1",
        ),
        (
            r#"{"table":"shop.opens","since":"last tuesday"}"#,
            Code::InvalidArgument,
            "RFC 3339",
        ),
    ];
    for (ticket, expected, text) in cases {
        let (status, message) = do_get(&mut client, ticket).await.unwrap_err();
        assert_eq!(status, expected, "{ticket}: {message}");
        assert!(message.contains(text), "{ticket}: {message}");
    }
    // The same connection and a new one still work.
    assert_eq!(
        times(
            &do_get(&mut client, r#"{"table":"shop.opens"}"#)
                .await
                .unwrap()
        )
        .len(),
        30
    );
    let mut other = server.client().await;
    assert_eq!(
        times(
            &do_get(&mut other, r#"{"table":"shop.opens"}"#)
                .await
                .unwrap()
        )
        .len(),
        30
    );
    server.stop().await;
}

#[tokio::test]
async fn follow_streams_appended_rows_and_stops_when_the_client_goes_away() {
    let source = source_with_rows();
    let server = TestServer::start(Arc::clone(&source), |_| {}).await;
    let mut client = server.client().await;
    let mut stream = client
        .do_get(Ticket::new(
            r#"{"table":"shop.opens","columns":["time_","path"],"since":29000000000,"follow":true}"#,
        ))
        .await
        .unwrap();
    // The snapshot part: rows 29 and 30.
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(times(&[first]), [29_000_000_000, 30_000_000_000]);
    assert_eq!(source.followers(&opens()), 1);

    // An older row is filtered out; a new one arrives promptly.
    let old = standard_batch(&[Row::new(1, 1, "old", "/old")]).unwrap();
    assert!(source.append(&opens(), old));
    let appended = std::time::Instant::now();
    let new = standard_batch(&[Row::new(31_000_000_000, 7, "new", "/new")]).unwrap();
    assert!(source.append(&opens(), new));
    let next = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("the appended row arrives within 1 s")
        .unwrap()
        .unwrap();
    assert!(appended.elapsed() < Duration::from_secs(1));
    assert_eq!(next.num_columns(), 2);
    assert_eq!(
        next.column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0),
        "/new"
    );

    // Cancelling drops the subscription on the server.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while source.followers(&opens()) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn follow_honors_the_limit_and_skips_nothing_appended_during_the_snapshot() {
    let source = source_with_rows();
    let read =
        crate::flight::TableTicket::parse(br#"{"table":"shop.opens","follow":true,"limit":32}"#)
            .unwrap()
            .validate(&source.snapshot(&opens()).unwrap().info)
            .unwrap();
    let mut stream = read_table(&*source, read).unwrap();
    for i in 31..=33 {
        let batch = standard_batch(&[Row::new(i * 1_000_000_000, 1, "x", "/x")]).unwrap();
        assert!(source.append(&opens(), batch));
    }
    let mut all = Vec::new();
    while let Some(batch) = stream.next().await {
        all.push(batch.unwrap());
    }
    // 30 from the snapshot, then 31 and 32; the limit ends the stream.
    assert_eq!(
        times(&all),
        (1..=32).map(|s| s * 1_000_000_000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_follower_that_falls_behind_gets_data_loss() {
    let source = source_with_rows();
    let read = crate::flight::TableTicket::parse(br#"{"table":"shop.opens","follow":true}"#)
        .unwrap()
        .validate(&source.snapshot(&opens()).unwrap().info)
        .unwrap();
    let mut stream = read_table(&*source, read).unwrap();
    for i in 0..100 {
        let batch = standard_batch(&[Row::new(100_000_000_000 + i, 1, "x", "/x")]).unwrap();
        assert!(source.append(&opens(), batch));
    }
    let mut rows = 0;
    let error = loop {
        match stream.next().await.unwrap() {
            Ok(batch) => rows += batch.num_rows(),
            Err(error) => break error,
        }
    };
    assert_eq!(rows, 30, "the snapshot came first");
    let (status, message) = code(error);
    assert_eq!(status, Code::DataLoss);
    assert!(message.contains("36 batches behind"), "{message}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn sql_group_by_matches_the_rows() {
    let server = TestServer::start(source_with_rows(), |_| {}).await;
    let mut client = server.client().await;
    let batches = sql(
        &mut client,
        "SELECT comm, count(*) AS n FROM shop.opens WHERE time_ >= to_timestamp_nanos(4000000000) \
         GROUP BY comm ORDER BY comm",
    )
    .await
    .unwrap();
    let mut counts = Vec::new();
    for batch in &batches {
        for i in 0..batch.num_rows() {
            counts.push((
                batch.column(0).as_string::<i32>().value(i).to_owned(),
                batch.column(1).as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    let mut expected = std::collections::BTreeMap::new();
    for row in rows().iter().filter(|r| r.time >= 4_000_000_000) {
        *expected.entry(row.comm.clone()).or_insert(0i64) += 1;
    }
    assert_eq!(counts, expected.into_iter().collect::<Vec<_>>());

    // Unqualified names resolve in schema `sonde`.
    let batches = sql(&mut client, "SELECT count(*) FROM probe_status")
        .await
        .unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    server.stop().await;
}

#[tokio::test]
async fn sql_errors_get_precise_statuses() {
    let source = Arc::new(MemorySource::new());
    source.add_table(opens(), standard_schema());
    // Enough distinct rows that sorting them all needs more than the budget.
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
        assert!(source.append(&opens(), standard_batch(&rows).unwrap()));
    }
    let server = TestServer::start(source, |c| c.query_memory_limit = 1 << 20).await;
    let mut client = server.client().await;
    let cases = [
        ("SELEKT 1", Code::InvalidArgument, "SQL"),
        (
            "SELECT * FROM shop.nope",
            Code::NotFound,
            "no table shop.nope",
        ),
        ("SELECT nope FROM shop.opens", Code::InvalidArgument, "nope"),
        (
            "SELECT 1; SELECT 2",
            Code::InvalidArgument,
            "exactly one statement",
        ),
        (
            "CREATE TABLE shop.x (a INT)",
            Code::InvalidArgument,
            "read-only",
        ),
        (
            "SELECT path, comm, pid FROM shop.opens ORDER BY path DESC",
            Code::ResourceExhausted,
            "memory budget",
        ),
    ];
    for (query, expected, text) in cases {
        let (status, message) = sql(&mut client, query).await.unwrap_err();
        assert_eq!(status, expected, "{query}: {message}");
        assert!(message.contains(text), "{query}: {message}");
    }
    // Small queries still run, on the same connection.
    let batches = sql(&mut client, "SELECT count(*) FROM shop.opens")
        .await
        .unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        100_000
    );
    server.stop().await;
}

#[tokio::test]
async fn sql_metadata_and_prepared_statements() {
    let server = TestServer::start(source_with_rows(), |_| {}).await;
    let mut client = server.client().await;
    let command = |any: Any| FlightDescriptor::new_cmd(any.encode_to_vec());

    let info = client
        .get_flight_info(command(CommandGetCatalogs {}.as_any()))
        .await
        .unwrap();
    let batches = fetch(&mut client, &info).await.unwrap();
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "sonde");

    let info = client
        .get_flight_info(command(
            CommandGetDbSchemas {
                catalog: None,
                db_schema_filter_pattern: None,
            }
            .as_any(),
        ))
        .await
        .unwrap();
    let batches = fetch(&mut client, &info).await.unwrap();
    let schemas: Vec<&str> = batches[0]
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(schemas, ["shop", "sonde"]);

    let info = client
        .get_flight_info(command(
            CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: Some("sh%".into()),
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            }
            .as_any(),
        ))
        .await
        .unwrap();
    let batches = fetch(&mut client, &info).await.unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    assert_eq!(batches[0].column(2).as_string::<i32>().value(0), "opens");
    let schema_bytes = batches[0].column(4).as_binary::<i32>().value(0);
    let schema = arrow_ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    assert_eq!(schema, *standard_schema());

    let info = client
        .get_flight_info(command(
            CommandGetSqlInfo {
                info: vec![
                    SqlInfo::FlightSqlServerName as u32,
                    SqlInfo::FlightSqlServerReadOnly as u32,
                ],
            }
            .as_any(),
        ))
        .await
        .unwrap();
    let batches = fetch(&mut client, &info).await.unwrap();
    assert_eq!(batches[0].num_rows(), 2);

    // Prepared statement: create, execute, close.
    let action = arrow_flight::Action::new(
        "CreatePreparedStatement",
        ActionCreatePreparedStatementRequest {
            query: "SELECT pid FROM shop.opens WHERE comm = 'ls'".into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    );
    let results: Vec<_> = client
        .do_action(action)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let created: ActionCreatePreparedStatementResult = Any::decode(results[0].clone())
        .unwrap()
        .unpack()
        .unwrap()
        .unwrap();
    let query = CommandPreparedStatementQuery {
        prepared_statement_handle: created.prepared_statement_handle.clone(),
    };
    let info = client
        .get_flight_info(command(query.as_any()))
        .await
        .unwrap();
    let batches = fetch(&mut client, &info).await.unwrap();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, rows_with_comm("ls"));
    let close = arrow_flight::Action::new(
        "ClosePreparedStatement",
        arrow_flight::sql::ActionClosePreparedStatementRequest {
            prepared_statement_handle: created.prepared_statement_handle,
        }
        .as_any()
        .encode_to_vec(),
    );
    let _: Vec<_> = client
        .do_action(close)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    server.stop().await;
}

fn rows_with_comm(comm: &str) -> usize {
    rows().iter().filter(|r| r.comm == comm).count()
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let server = TestServer::start(source_with_rows(), |c| c.token = Some("s3cret".into())).await;

    let mut anonymous = server.client().await;
    let (status, message) = do_get(&mut anonymous, r#"{"table":"shop.opens"}"#)
        .await
        .unwrap_err();
    assert_eq!(status, Code::Unauthenticated, "{message}");

    let mut wrong = server.client().await;
    wrong.add_header("authorization", "Bearer guess").unwrap();
    let (status, message) = do_get(&mut wrong, r#"{"table":"shop.opens"}"#)
        .await
        .unwrap_err();
    assert_eq!(status, Code::Unauthenticated, "{message}");
    assert!(message.contains("invalid bearer token"));

    let mut right = server.client().await;
    right.add_header("authorization", "Bearer s3cret").unwrap();
    assert_eq!(
        times(
            &do_get(&mut right, r#"{"table":"shop.opens"}"#)
                .await
                .unwrap()
        )
        .len(),
        30
    );
    let batches = sql(&mut right, "SELECT count(*) FROM shop.opens")
        .await
        .unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        30
    );
    server.stop().await;
}

#[tokio::test]
async fn calls_are_counted_by_method_and_status_code() {
    let server = TestServer::start(source_with_rows(), |c| c.token = Some("s3cret".into())).await;
    let mut client = server.client().await;
    client.add_header("authorization", "Bearer s3cret").unwrap();
    for _ in 0..3 {
        let batches = do_get(&mut client, r#"{"table":"shop.opens"}"#)
            .await
            .unwrap();
        assert_eq!(times(&batches).len(), 30);
    }
    for _ in 0..2 {
        client
            .get_flight_info(FlightDescriptor::new_path(vec![
                "shop".into(),
                "opens".into(),
            ]))
            .await
            .unwrap();
    }
    let (status, _) = code(
        client
            .get_flight_info(FlightDescriptor::new_path(vec![
                "shop".into(),
                "nope".into(),
            ]))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Code::NotFound);
    sql(&mut client, "SELECT count(*) FROM shop.opens")
        .await
        .unwrap();
    let mut anonymous = server.client().await;
    do_get(&mut anonymous, r#"{"table":"shop.opens"}"#)
        .await
        .unwrap_err();
    // A stream the client abandons after its first batch.
    let mut stream = client
        .do_get(Ticket::new(r#"{"table":"shop.opens","follow":true}"#))
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);

    let metrics = &server.metrics;
    let counted = || {
        [
            metrics.requests("DoGet", "", "Ok"),
            metrics.requests("GetFlightInfo", "", "Ok"),
            metrics.requests("GetFlightInfo", "", "NotFound"),
            metrics.requests("DoGet", "", "Unauthenticated"),
            metrics.requests("DoGet", "", "Cancelled"),
            metrics.requests("GetFlightInfo", "CommandStatementQuery", "Ok"),
            metrics.requests("DoGet", "TicketStatementQuery", "Ok"),
        ]
    };
    // The server sees the abandoned stream go within moments.
    for _ in 0..50 {
        if counted()[4] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted(), [3, 2, 1, 1, 1, 1, 1]);
    server.stop().await;
}

#[tokio::test]
async fn bad_configuration_fails_before_binding() {
    let source: Arc<dyn TableSource> = source_with_rows();
    let mut config = FlightConfig::new("127.0.0.1:0".parse().unwrap());
    config.token = Some(String::new());
    assert!(matches!(
        super::bind(Arc::clone(&source), config).await,
        Err(FlightError::EmptyToken)
    ));
    let mut config = FlightConfig::new("127.0.0.1:0".parse().unwrap());
    config.tls = Some((
        "/nonexistent/cert.pem".into(),
        "/nonexistent/key.pem".into(),
    ));
    let error = super::bind(source, config).await.unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}

#[tokio::test]
async fn serves_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let server = TestServer::start(source_with_rows(), |c| {
        c.tls = Some((cert_path.clone(), key_path.clone()));
    })
    .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
    assert_eq!(
        times(
            &do_get(&mut client, r#"{"table":"shop.opens"}"#)
                .await
                .unwrap()
        )
        .len(),
        30
    );

    // Plain text is refused on the TLS port.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = FlightClient::new(channel);
        assert!(
            do_get(&mut client, r#"{"table":"shop.opens"}"#)
                .await
                .is_err()
        );
    }
    server.stop().await;
}

#[test]
fn sql_commands_are_told_from_json() {
    use super::service::is_sql_command;
    assert!(is_sql_command(
        &CommandGetCatalogs {}.as_any().encode_to_vec()
    ));
    assert!(!is_sql_command(br#"{"table":"shop.opens"}"#));
    assert!(!is_sql_command(b"not json at all"));
    let other = Any {
        type_url: "type.googleapis.com/other.Message".into(),
        value: Default::default(),
    };
    assert!(!is_sql_command(&other.encode_to_vec()));
}

#[tokio::test]
async fn columns_are_plain_by_default_and_dictionaries_when_asked() {
    let source = source_with_rows();
    let server = TestServer::start(Arc::clone(&source), |_| {}).await;
    let mut client = server.client().await;
    let comms = |batches: &[RecordBatch]| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name("comm").unwrap();
                let plain = arrow_cast::cast(column, &arrow_schema::DataType::Utf8).unwrap();
                plain
                    .as_string::<i32>()
                    .iter()
                    .map(|c| c.unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let plain = do_get(&mut client, r#"{"table": "shop.opens"}"#)
        .await
        .unwrap();
    assert_eq!(
        plain[0]
            .schema()
            .field_with_name("comm")
            .unwrap()
            .data_type(),
        &arrow_schema::DataType::Utf8
    );
    let dense = do_get(
        &mut client,
        r#"{"table": "shop.opens", "since": 5000000000, "dictionary": true}"#,
    )
    .await
    .unwrap();
    assert!(matches!(
        dense[0]
            .schema()
            .field_with_name("comm")
            .unwrap()
            .data_type(),
        arrow_schema::DataType::Dictionary(..)
    ));
    // The same rows either way; columns not known to be low-cardinality stay plain.
    assert_eq!(comms(&dense), comms(&plain)[4..]);
    assert_eq!(
        dense[0]
            .schema()
            .field_with_name("path")
            .map(|f| f.data_type().clone())
            .ok(),
        plain[0]
            .schema()
            .field_with_name("path")
            .map(|f| f.data_type().clone())
            .ok()
    );
    // The schema a client is promised is the one it gets.
    let info = client
        .get_flight_info(FlightDescriptor::new_cmd(
            r#"{"table": "shop.opens", "dictionary": true}"#.to_owned(),
        ))
        .await
        .unwrap();
    let promised = info.try_decode_schema().unwrap();
    assert_eq!(promised.fields(), dense[0].schema().fields());

    // Flight SQL: plain unless the query casts.
    let cast = sql(
        &mut client,
        "SELECT arrow_cast(comm, 'Dictionary(Int32, Utf8)') AS comm FROM shop.opens ORDER BY time_",
    )
    .await
    .unwrap();
    assert!(matches!(
        cast[0].schema().field(0).data_type(),
        arrow_schema::DataType::Dictionary(..)
    ));
    assert_eq!(comms(&cast), comms(&plain));
    server.stop().await;
}

/// 2,000 rows 10 ms apart over 20 s, in batches of 250.
fn many_rows() -> Vec<Row> {
    (0..2_000)
        .map(|i| {
            let comm = ["cat", "ls", "nginx"][i as usize % 3];
            Row::new(
                i * 10_000_000,
                100 + i as u32 % 7,
                comm,
                &format!("/f{}", i % 50),
            )
        })
        .collect()
}

/// [`many_rows`] in a store that has compacted them all into four cold
/// batches of 500 rows, and the same rows as appended in a memory source.
fn compacted_store() -> (TableStore, Arc<MemorySource>) {
    let clock = Arc::new(ManualClock::new(0));
    let store = TableStore::with_clock(
        StoreConfig {
            default_policy: RetentionPolicy::UNBOUNDED,
            compaction: Some(Compaction {
                cold_after: Duration::from_secs(1),
                merge_for: Duration::ZERO,
                max_rows: 500,
                ..Compaction::default()
            }),
            ..StoreConfig::default()
        },
        clock.clone(),
    );
    store.create_table(opens(), standard_schema()).unwrap();
    let hot = Arc::new(MemorySource::new());
    hot.add_table(opens(), standard_schema());
    for chunk in many_rows().chunks(250) {
        let batch = standard_batch(chunk).unwrap();
        store.append(&opens(), batch.clone()).unwrap();
        assert!(hot.append(&opens(), batch));
    }
    clock.set(60 * 1_000_000_000);
    store.compact();
    let stats = store.table_stats(&opens()).unwrap();
    assert_eq!((stats.batches, stats.cold_batches), (4, 4), "{stats:?}");
    (store, hot)
}

/// Every read of a compacted table answers exactly what the same read of
/// the rows held as appended answers; reads outside its time range decode
/// nothing.
#[tokio::test]
async fn compacted_tables_answer_every_read_as_hot_ones_do() {
    let (store, hot) = compacted_store();
    let hot = TestServer::start(hot, |_| {}).await;
    let cold = TestServer::start(Arc::new(store.clone()), |_| {}).await;
    let (mut hot_client, mut cold_client) = (hot.client().await, cold.client().await);
    // Rows as text: dictionary columns compare by value, not by how
    // each batch's dictionary happens to be ordered.
    let text = |batches: Vec<RecordBatch>| {
        arrow_cast::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    };

    for ticket in [
        r#"{"table":"shop.opens"}"#,
        r#"{"table":"shop.opens","columns":["path","pid"]}"#,
        r#"{"table":"shop.opens","since":5000000000,"until":"1970-01-01T00:00:15Z"}"#,
        r#"{"table":"shop.opens","columns":["comm"],"since":9000000000,"limit":611}"#,
        r#"{"table":"shop.opens","dictionary":true,"until":12000000000}"#,
    ] {
        let want = do_get(&mut hot_client, ticket).await.unwrap();
        let got = do_get(&mut cold_client, ticket).await.unwrap();
        assert!(want.iter().map(RecordBatch::num_rows).sum::<usize>() > 0);
        assert_eq!(text(got), text(want), "{ticket}");
    }
    for query in [
        "SELECT comm, count(*) AS n, sum(pid) AS pids FROM shop.opens GROUP BY comm ORDER BY comm",
        "SELECT path, pid FROM shop.opens WHERE time_ >= '1970-01-01T00:00:12Z' ORDER BY time_",
        "SELECT max(time_) AS newest, count(DISTINCT path) AS files FROM shop.opens",
    ] {
        let want = sql(&mut hot_client, query).await.unwrap();
        let got = sql(&mut cold_client, query).await.unwrap();
        assert_eq!(text(got), text(want), "{query}");
    }

    let all = sql(&mut cold_client, "SELECT count(*) AS n FROM shop.opens")
        .await
        .unwrap();
    assert_eq!(all[0].column(0).as_primitive::<Int64Type>().value(0), 2_000);

    // Past the newest row: no cold batch is decoded.
    let misses = store.cache_stats().misses;
    let none = do_get(
        &mut cold_client,
        r#"{"table":"shop.opens","since":21000000000}"#,
    )
    .await
    .unwrap();
    assert!(none.iter().all(|b| b.num_rows() == 0));
    let late = sql(
        &mut cold_client,
        "SELECT count(*) AS n FROM shop.opens WHERE time_ >= '1970-01-01T00:00:21Z'",
    )
    .await
    .unwrap();
    assert_eq!(late[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    assert_eq!(store.cache_stats().misses, misses);
    // A query bounded to the last 5 s decodes only the last cold batch.
    let recent = sql(
        &mut cold_client,
        "SELECT count(*) AS n FROM shop.opens WHERE time_ > '1970-01-01T00:00:15.5Z'",
    )
    .await
    .unwrap();
    assert_eq!(
        recent[0].column(0).as_primitive::<Int64Type>().value(0),
        449
    );
    assert_eq!(store.cache_stats().misses, misses + 1);
    assert_eq!(store.unreadable_batches(), 0);
    hot.stop().await;
    cold.stop().await;
}
