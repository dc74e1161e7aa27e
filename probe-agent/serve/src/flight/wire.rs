//! DoGet answered without copying the rows. tonic encodes every message
//! into a buffer of its own, and arrow-flight's encoder first copies each
//! batch into one contiguous body: two copies of every byte served, into
//! freshly allocated memory whose pages fault in and are zeroed. Here a
//! DoGet of a table or of a SQL statement becomes gRPC frames whose bodies
//! are the batches' own Arrow buffers, handed to HTTP/2 as they are.
//!
//! [`ZeroCopyDoGet`] wraps the generated `FlightService` server: DoGet
//! calls it can answer (table tickets, Flight SQL statements) get a
//! [`DoGetBody`]; every other call, and DoGets of Flight SQL metadata,
//! go to the wrapped server unchanged. Authentication and the request
//! metrics wrap both alike.
//!
//! The messages are arrow-ipc's stream encoding ([`StreamEncoder`], which
//! hands over the batches' buffers rather than copies), cut at message
//! boundaries: each IPC message (schema, dictionary, record batch) becomes
//! one `FlightData`, its flatbuffer header in `data_header` and its body
//! in `data_body`, as arrow-flight sends them.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_flight::{Ticket, flight_service_server::FlightServiceServer};
use arrow_ipc::{MessageHeader, writer::StreamEncoder};
use arrow_schema::{ArrowError, SchemaRef};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::{Status, body::Body as TonicBody, server::NamedService};
use tower_service::Service;

use super::{service::SondeFlightService, table::BatchStream};

const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// The largest request message (a ticket) taken, as tonic's default.
const MAX_TICKET_BYTES: usize = 4 << 20;

/// Batches whose buffers exceed this are sent in row slices, as
/// arrow-flight's encoder does: gRPC clients limit the size of a message
/// they take (4 MiB by default in most).
const MAX_MESSAGE_BYTES: usize = 2 << 20;

/// Pieces of a frame shorter than this (IPC padding, the protobuf tags)
/// are gathered into one chunk rather than sent as HTTP/2 DATA frames of
/// their own.
const SMALL_PIECE: usize = 4 << 10;

/// The Flight service with DoGet answered from the batches' own buffers.
#[derive(Clone)]
pub(crate) struct ZeroCopyDoGet {
    inner: FlightServiceServer<SondeFlightService>,
    service: Arc<SondeFlightService>,
}

impl ZeroCopyDoGet {
    pub(crate) fn new(service: SondeFlightService) -> Self {
        let service = Arc::new(service);
        Self {
            inner: FlightServiceServer::from_arc(service.clone()),
            service,
        }
    }
}

impl NamedService for ZeroCopyDoGet {
    const NAME: &'static str = <FlightServiceServer<SondeFlightService> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl Service<http::Request<TonicBody>> for ZeroCopyDoGet {
    type Response = http::Response<TonicBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<TonicBody>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<TonicBody>) -> Self::Future {
        if request.uri().path() != DO_GET {
            return Box::pin(self.inner.call(request));
        }
        // The clone is ready as the original was (the generated server
        // always is); the original stays for the next call.
        let mut inner = self.inner.clone();
        let service = self.service.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let (uri, version) = (parts.uri.clone(), parts.version);
            let message = match read_message(body).await {
                Ok(message) => message,
                Err(status) => return Ok(status.into_http()),
            };
            let ticket = match Ticket::decode(message.clone()) {
                Ok(ticket) => ticket,
                Err(e) => {
                    return Ok(Status::invalid_argument(format!(
                        "the DoGet request is not a Ticket: {e}"
                    ))
                    .into_http());
                }
            };
            let ticket = tonic::Request::from_http(http::Request::from_parts(parts, ticket));
            match service.batches(&ticket).await {
                Ok(Some((schema, batches))) => Ok(match DoGetBody::new(schema, batches) {
                    Ok(body) => {
                        let mut response = http::Response::new(TonicBody::new(body));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/grpc"),
                        );
                        response
                    }
                    Err(e) => {
                        Status::internal(format!("cannot encode the result: {e}")).into_http()
                    }
                }),
                Ok(None) => {
                    // Not rows of a table or statement: the generated
                    // server answers, given the request as it came.
                    let (metadata, extensions, _) = ticket.into_parts();
                    let mut parts = http::Request::new(()).into_parts().0;
                    parts.headers = metadata.into_headers();
                    parts.extensions = extensions;
                    parts.method = http::Method::POST;
                    parts.uri = uri;
                    parts.version = version;
                    let body = TonicBody::new(http_body_util::Full::new(frame_message(&message)));
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The one gRPC message of a unary request body, uncompressed.
async fn read_message(body: TonicBody) -> Result<Bytes, Status> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, MAX_TICKET_BYTES + 5);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| Status::resource_exhausted(format!("cannot read the DoGet request: {e}")))?
        .to_bytes();
    let [compressed, a, b, c, d, ..] = bytes[..] else {
        return Err(Status::invalid_argument("the DoGet request has no message"));
    };
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed DoGet requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if bytes.len() != 5 + len {
        return Err(Status::invalid_argument(format!(
            "the DoGet request frame says {len} bytes but holds {}",
            bytes.len() - 5
        )));
    }
    Ok(bytes.slice(5..))
}

/// `message` in a gRPC frame: uncompressed, its length first.
fn frame_message(message: &Bytes) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The response body of a DoGet: the schema first, then the batches as
/// they come, then the call's status as trailers.
pub(crate) struct DoGetBody {
    batches: BatchStream,
    encoder: FlightFrames,
    /// Ready to send, in order.
    chunks: VecDeque<Bytes>,
    /// The trailers went out.
    finished: bool,
}

impl DoGetBody {
    pub(crate) fn new(schema: SchemaRef, batches: BatchStream) -> Result<Self, ArrowError> {
        let mut chunks = VecDeque::new();
        let encoder = FlightFrames::start(&schema, &mut chunks)?;
        Ok(Self {
            batches,
            encoder,
            chunks,
            finished: false,
        })
    }

    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.finished = true;
        self.chunks.clear();
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // A message that cannot be a header value: the code alone.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

impl Body for DoGetBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let status = match this.batches.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(batch))) => {
                    match this.encoder.batch(&batch, &mut this.chunks) {
                        Ok(()) => continue,
                        Err(e) => Status::internal(format!("cannot encode the result: {e}")),
                    }
                }
                Poll::Ready(Some(Err(e))) => Status::from(e),
                Poll::Ready(None) => Status::ok(""),
            };
            return Poll::Ready(Some(Ok(this.trailers(&status))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Batches to gRPC frames of `FlightData`, one per IPC message.
struct FlightFrames {
    encoder: StreamEncoder,
}

impl FlightFrames {
    /// Starts a stream of `schema`, putting its schema message in
    /// `chunks`: clients see the schema before the first batch arrives
    /// (a follow read may wait long for one).
    fn start(schema: &SchemaRef, chunks: &mut VecDeque<Bytes>) -> Result<Self, ArrowError> {
        let mut encoder = StreamEncoder::try_new(schema)?;
        // The encoder writes the schema with its first batch; an empty one
        // brings it out now. Its dictionaries (empty) are sent, so the
        // encoder's record of what the client holds stays true; the empty
        // record batch is not.
        let buffers = encoder.encode(&RecordBatch::new_empty(schema.clone()))?;
        let mut frames = Self { encoder };
        frames.push_messages(buffers, true, chunks)?;
        Ok(frames)
    }

    fn batch(
        &mut self,
        batch: &RecordBatch,
        chunks: &mut VecDeque<Bytes>,
    ) -> Result<(), ArrowError> {
        for slice in split_for_messages(batch) {
            let buffers = self.encoder.encode(&slice)?;
            self.push_messages(buffers, false, chunks)?;
        }
        Ok(())
    }

    /// Cuts the IPC stream in `buffers` into its messages, each a gRPC
    /// frame of one `FlightData`.
    fn push_messages(
        &mut self,
        buffers: Vec<Buffer>,
        skip_record_batches: bool,
        chunks: &mut VecDeque<Bytes>,
    ) -> Result<(), ArrowError> {
        let mut stream = IpcPieces::new(buffers);
        while !stream.is_empty() {
            let prefix = stream.copy(8)?;
            if prefix[..4] != [0xff; 4] {
                return Err(ArrowError::IpcError(
                    "an IPC message without its continuation marker".to_owned(),
                ));
            }
            let header_len = usize::try_from(i32::from_le_bytes([
                prefix[4], prefix[5], prefix[6], prefix[7],
            ]))
            .map_err(|_| ArrowError::IpcError("a negative IPC header length".to_owned()))?;
            if header_len == 0 {
                // End of stream.
                break;
            }
            let header = stream.copy(header_len)?;
            let message = arrow_ipc::root_as_message(&header)
                .map_err(|e| ArrowError::IpcError(format!("an unreadable IPC header: {e}")))?;
            let body_len = usize::try_from(message.bodyLength())
                .map_err(|_| ArrowError::IpcError("a negative IPC body length".to_owned()))?;
            let kind = message.header_type();
            let body = stream.slices(body_len)?;
            if skip_record_batches && kind == MessageHeader::RecordBatch {
                continue;
            }
            push_flight_data(&header, body_len, body, chunks)?;
        }
        Ok(())
    }
}

/// Row slices of `batch` whose buffers come to about
/// [`MAX_MESSAGE_BYTES`] each; the batch itself when it is smaller.
fn split_for_messages(batch: &RecordBatch) -> Vec<RecordBatch> {
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|column| column.get_buffer_memory_size())
        .sum();
    let rows = batch.num_rows();
    if bytes <= MAX_MESSAGE_BYTES || rows <= 1 {
        return vec![batch.clone()];
    }
    let parts = bytes.div_ceil(MAX_MESSAGE_BYTES).min(rows);
    let per_part = rows.div_ceil(parts);
    (0..rows)
        .step_by(per_part)
        .map(|offset| batch.slice(offset, per_part.min(rows - offset)))
        .collect()
}

/// One `FlightData` with `header` as `data_header` and the `body_len`
/// bytes of `body` as `data_body`, framed for gRPC. The protobuf is
/// written by hand so the body goes out as the pieces it is in: field 2
/// (`data_header`), then field 1000 (`data_body`), both length-delimited.
fn push_flight_data(
    header: &[u8],
    body_len: usize,
    body: Vec<Bytes>,
    chunks: &mut VecDeque<Bytes>,
) -> Result<(), ArrowError> {
    const DATA_HEADER_KEY: u64 = 2 << 3 | 2;
    const DATA_BODY_KEY: u64 = 1000 << 3 | 2;
    let header_field = prost::length_delimiter_len(header.len()) + header.len() + 1;
    let body_field = if body_len == 0 {
        0
    } else {
        prost::encoding::encoded_len_varint(DATA_BODY_KEY)
            + prost::length_delimiter_len(body_len)
            + body_len
    };
    let message_len = u32::try_from(header_field + body_field).map_err(|_| {
        ArrowError::IpcError(format!(
            "a Flight message of {} bytes is over gRPC's limit",
            header_field + body_field
        ))
    })?;
    let mut head = BytesMut::with_capacity(5 + header_field + 16);
    head.put_u8(0);
    head.put_u32(message_len);
    prost::encoding::encode_varint(DATA_HEADER_KEY, &mut head);
    prost::encoding::encode_varint(header.len() as u64, &mut head);
    head.put_slice(header);
    if body_len > 0 {
        prost::encoding::encode_varint(DATA_BODY_KEY, &mut head);
        prost::encoding::encode_varint(body_len as u64, &mut head);
    }
    let mut small = head;
    for piece in body {
        if piece.len() < SMALL_PIECE {
            small.put_slice(&piece);
        } else {
            if !small.is_empty() {
                chunks.push_back(small.split().freeze());
            }
            chunks.push_back(piece);
        }
    }
    if !small.is_empty() {
        chunks.push_back(small.freeze());
    }
    Ok(())
}

/// An IPC stream held as the encoder's buffers, read in order: headers
/// copied out (they are small), bodies taken as slices of the buffers.
struct IpcPieces {
    buffers: VecDeque<Buffer>,
    /// Bytes of the first buffer already read.
    offset: usize,
}

impl IpcPieces {
    fn new(buffers: Vec<Buffer>) -> Self {
        Self {
            buffers: buffers.into_iter().filter(|b| !b.is_empty()).collect(),
            offset: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// The next `len` bytes as slices of the buffers, not copied.
    fn slices(&mut self, mut len: usize) -> Result<Vec<Bytes>, ArrowError> {
        let mut out = Vec::new();
        while len > 0 {
            let Some(first) = self.buffers.front() else {
                return Err(ArrowError::IpcError(
                    "an IPC stream shorter than its headers say".to_owned(),
                ));
            };
            let available = first.len() - self.offset;
            let take = available.min(len);
            let bytes = Bytes::from_owner(ArrowBytes(first.clone()));
            out.push(bytes.slice(self.offset..self.offset + take));
            len -= take;
            self.advance(take);
        }
        Ok(out)
    }

    /// The next `len` bytes, copied.
    fn copy(&mut self, len: usize) -> Result<Vec<u8>, ArrowError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let Some(first) = self.buffers.front() else {
                return Err(ArrowError::IpcError(
                    "an IPC stream shorter than its headers say".to_owned(),
                ));
            };
            let take = (first.len() - self.offset).min(len - out.len());
            out.extend_from_slice(&first.as_slice()[self.offset..self.offset + take]);
            self.advance(take);
        }
        Ok(out)
    }

    fn advance(&mut self, by: usize) {
        self.offset += by;
        if self
            .buffers
            .front()
            .is_some_and(|first| self.offset == first.len())
        {
            self.buffers.pop_front();
            self.offset = 0;
        }
    }
}

/// An Arrow buffer as the owner of a `bytes::Bytes`.
struct ArrowBytes(Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

#[cfg(test)]
mod tests;
