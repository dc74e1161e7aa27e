use std::sync::Arc;

use arrow_array::{
    ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray, types::Int32Type,
};
use arrow_flight::{FlightData, decode::FlightRecordBatchStream, error::FlightError};
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Int64, false),
        Field::new("comm", DataType::Utf8, true),
        Field::new(
            "state",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
    ]))
}

fn batch(rows: usize, from: i64) -> Result<RecordBatch, ArrowError> {
    let pids: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..rows as i64).map(|i| from + i),
    ));
    let comms: ArrayRef = Arc::new(StringArray::from_iter(
        (0..rows).map(|i| (i % 7 != 0).then(|| format!("comm-{}", i % 13))),
    ));
    let states: ArrayRef = Arc::new(
        (0..rows)
            .map(|i| ["running", "sleeping", "stopped"].get(i % 4).copied())
            .collect::<DictionaryArray<Int32Type>>(),
    );
    RecordBatch::try_new(schema(), vec![pids, comms, states])
}

/// The whole body: its data, then its trailers.
async fn collect(body: DoGetBody) -> Result<(Bytes, HeaderMap), Status> {
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok((collected.to_bytes(), trailers))
}

/// The gRPC frames in `data`, each decoded as a `FlightData`.
fn messages(mut data: &[u8]) -> Result<Vec<FlightData>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let [compressed, a, b, c, d, rest @ ..] = data else {
            return Err("a truncated gRPC frame".into());
        };
        assert_eq!(*compressed, 0);
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        out.push(FlightData::decode(&rest[..len])?);
        data = &rest[len..];
    }
    Ok(out)
}

async fn decoded(messages: Vec<FlightData>) -> Result<Vec<RecordBatch>, FlightError> {
    let stream = futures::stream::iter(messages.into_iter().map(Ok));
    FlightRecordBatchStream::new_from_flight_data(stream)
        .try_collect()
        .await
}

fn stream_of(batches: Vec<Result<RecordBatch, FlightError>>) -> BatchStream {
    futures::stream::iter(batches).boxed()
}

#[tokio::test]
async fn batches_arrive_whole_and_in_order_with_their_dictionaries()
-> Result<(), Box<dyn std::error::Error>> {
    let sent = vec![
        batch(1000, 0)?,
        batch(10, 1000)?.slice(3, 5),
        batch(1, 2000)?,
    ];
    let body = DoGetBody::new(schema(), stream_of(sent.iter().cloned().map(Ok).collect()))?;
    let (data, trailers) = collect(body).await?;
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let messages = messages(&data)?;
    // The schema first, with no body.
    assert!(messages[0].data_body.is_empty());
    let received = decoded(messages).await?;
    assert_eq!(received, sent);
    Ok(())
}

#[tokio::test]
async fn an_empty_read_is_its_schema_alone() -> Result<(), Box<dyn std::error::Error>> {
    let body = DoGetBody::new(schema(), stream_of(Vec::new()))?;
    let (data, trailers) = collect(body).await?;
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let messages = messages(&data)?;
    let stream = futures::stream::iter(messages.into_iter().map(Ok));
    let mut stream = FlightRecordBatchStream::new_from_flight_data(stream);
    assert!(stream.next().await.is_none());
    assert_eq!(stream.schema(), Some(&schema()));
    Ok(())
}

#[tokio::test]
async fn a_failed_read_ends_with_its_status_after_the_rows_before_it()
-> Result<(), Box<dyn std::error::Error>> {
    let sent = batch(100, 0)?;
    let body = DoGetBody::new(
        schema(),
        stream_of(vec![
            Ok(sent.clone()),
            Err(FlightError::Tonic(Box::new(Status::resource_exhausted(
                "over the query's memory: 3 MiB\nof 2 MiB",
            )))),
            Ok(batch(5, 100)?),
        ]),
    )?;
    let (data, trailers) = collect(body).await?;
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"8"[..])
    );
    assert!(
        trailers
            .get("grpc-message")
            .is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("memory"))),
        "{trailers:?}"
    );
    assert_eq!(decoded(messages(&data)?).await?, vec![sent]);
    Ok(())
}

#[tokio::test]
async fn a_large_batch_goes_out_in_messages_a_client_takes_and_its_buffers_uncopied()
-> Result<(), Box<dyn std::error::Error>> {
    // About 10 MiB of pids alone.
    let large = batch(1_300_000, 0)?;
    let pids = large.column(0).to_data().buffers()[0].clone();
    let mut body = DoGetBody::new(schema(), stream_of(vec![Ok(large.clone())]))?;
    let mut data = BytesMut::new();
    let mut shared = 0;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            break;
        };
        // A chunk inside the pids' own buffer was sent without a copy.
        let range = pids.as_ptr() as usize..pids.as_ptr() as usize + pids.len();
        if range.contains(&(chunk.as_ptr() as usize)) {
            shared += chunk.len();
        }
        data.put_slice(&chunk);
    }
    assert_eq!(shared, pids.len());
    let messages = messages(&data)?;
    let largest = messages.iter().map(|m| m.encoded_len()).max().unwrap_or(0);
    assert!(
        largest <= MAX_MESSAGE_BYTES + (64 << 10),
        "a message of {largest} bytes"
    );
    assert!(messages.len() > 5, "{} messages", messages.len());
    let received = decoded(messages).await?;
    assert_eq!(
        arrow_select::concat::concat_batches(&schema(), &received)?,
        large
    );
    Ok(())
}

#[test]
fn a_request_frame_is_read_exactly() {
    let ticket = Ticket::new("{\"table\":\"shop.opens\"}").encode_to_vec();
    let framed = frame_message(&Bytes::from(ticket.clone()));
    assert_eq!(framed.len(), ticket.len() + 5);
    assert_eq!(&framed[5..], &ticket[..]);
}

#[tokio::test]
async fn a_malformed_request_is_refused_precisely() {
    let read = |bytes: &'static [u8]| {
        read_message(TonicBody::new(http_body_util::Full::new(
            Bytes::from_static(bytes),
        )))
    };
    let status = read(b"").await.err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    let status = read(b"\x01\x00\x00\x00\x01x").await.err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unimplemented));
    let status = read(b"\x00\x00\x00\x00\x09short").await.err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    let message = read(b"\x00\x00\x00\x00\x02ok").await.ok();
    assert_eq!(message.as_deref(), Some(&b"ok"[..]));
}
