//! Request metrics of the Flight endpoint: calls by gRPC method and status
//! code, and their duration.
//!
//! They are taken around the whole gRPC service, as a tower layer, so that
//! calls refused by the bearer-token check or naming no method count too.
//! A gRPC call's status is in the response headers when it failed before
//! answering, otherwise in the trailers after the last message; the
//! response body is wrapped to see them, and a call is recorded once, when
//! its status is known or its body is dropped (a client that went away is
//! `Cancelled`). The duration runs from the request to that moment, so a
//! DoGet lasts until its last batch was sent.
//!
//! Flight SQL commands travel inside the Flight methods; the service names
//! the command it found ([`note_command`]) in a slot the layer put in the
//! request's extensions, so the `command` label costs no second decoding.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::PREFIX;

/// The methods of `arrow.flight.protocol.FlightService`, as the `method`
/// label names them; any other path is `other`, so a client cannot grow
/// the label set.
const METHODS: [&str; 10] = [
    "Handshake",
    "ListFlights",
    "GetFlightInfo",
    "PollFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoExchange",
    "DoAction",
    "ListActions",
];

const SERVICE_PATH: &str = "/arrow.flight.protocol.FlightService/";

/// Upper bounds of the duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The Flight SQL messages and actions, as the `command` label names them.
const COMMANDS: [&str; 22] = [
    "CommandStatementQuery",
    "CommandStatementUpdate",
    "CommandStatementSubstraitPlan",
    "CommandStatementIngest",
    "CommandPreparedStatementQuery",
    "CommandPreparedStatementUpdate",
    "CommandGetCatalogs",
    "CommandGetDbSchemas",
    "CommandGetTables",
    "CommandGetTableTypes",
    "CommandGetSqlInfo",
    "CommandGetPrimaryKeys",
    "CommandGetExportedKeys",
    "CommandGetImportedKeys",
    "CommandGetCrossReference",
    "CommandGetXdbcTypeInfo",
    "TicketStatementQuery",
    "CreatePreparedStatement",
    "ClosePreparedStatement",
    "CreatePreparedSubstraitPlan",
    "BeginTransaction",
    "EndTransaction",
];

/// Where the service notes the Flight SQL command of a call.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommandSlot(Arc<OnceLock<&'static str>>);

/// Notes the Flight SQL command a call carries: `name` is a message's type
/// name (the end of its `Any` type URL) or an action type. Names Sonde does
/// not know are `other`, so a client cannot grow the label set.
pub(crate) fn note_command<T>(request: &tonic::Request<T>, name: &str) {
    if let Some(slot) = request.extensions().get::<CommandSlot>() {
        let known = COMMANDS.iter().find(|c| **c == name).copied();
        let _ = slot.0.set(known.unwrap_or("other"));
    }
}

type MethodCommandAndCode = [(&'static str, &'static str); 3];
type MethodOnly = [(&'static str, &'static str); 1];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The endpoint's request counters; clones share them.
#[derive(Clone, Debug)]
pub struct FlightMetrics {
    requests: Family<MethodCommandAndCode, Counter>,
    duration: Family<MethodOnly, Histogram, fn() -> Histogram>,
}

impl Default for FlightMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl FlightMetrics {
    /// Registers `sonde_flight_requests_total{method,command,code}` and
    /// `sonde_flight_request_duration_seconds{method}`.
    pub fn register(&self, registry: &mut Registry) {
        let sonde = registry.sub_registry_with_prefix(PREFIX);
        sonde.register(
            "flight_requests",
            "Arrow Flight and Flight SQL calls, by gRPC method, Flight SQL command \
             (empty for plain Flight) and status code",
            self.requests.clone(),
        );
        sonde.register_with_unit(
            "flight_request_duration",
            "Duration of Arrow Flight and Flight SQL calls, until their status was sent",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    fn record(
        &self,
        method: &'static str,
        command: &'static str,
        code: &'static str,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&[("method", method), ("command", command), ("code", code)])
            .inc();
        self.duration
            .get_or_create(&[("method", method)])
            .observe(elapsed.as_secs_f64());
    }

    /// Calls of `method` with the Flight SQL `command` (`""` for none)
    /// that ended with `code` so far.
    pub fn requests(&self, method: &'static str, command: &'static str, code: &'static str) -> u64 {
        self.requests
            .get(&[("method", method), ("command", command), ("code", code)])
            .map_or(0, |c| c.get())
    }

    /// The layer that counts the calls of the service it wraps.
    pub(crate) fn layer(&self) -> MeteredLayer {
        MeteredLayer(self.clone())
    }
}

/// The `method` label of a request path.
fn method_name(path: &str) -> &'static str {
    path.strip_prefix(SERVICE_PATH)
        .and_then(|method| METHODS.iter().find(|m| **m == method))
        .copied()
        .unwrap_or("other")
}

/// The `code` label of a `grpc-status` header or trailer, if there is one.
fn status_code(headers: &HeaderMap) -> Option<&'static str> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(match code {
        0 => "Ok",
        1 => "Cancelled",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    })
}

/// Wraps a service in [`Metered`].
#[derive(Clone, Debug)]
pub(crate) struct MeteredLayer(FlightMetrics);

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A gRPC service whose calls are counted.
#[derive(Clone, Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    metrics: FlightMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for Metered<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResponseBody: Body + Unpin,
{
    type Response = Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let method = method_name(request.uri().path());
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let command = CommandSlot::default();
        request.extensions_mut().insert(command.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(e) => {
                    let command = command.0.get().copied().unwrap_or("");
                    metrics.record(method, command, "Unknown", start.elapsed());
                    return Err(e);
                }
            };
            let call = Call {
                metrics,
                method,
                command,
                start,
                // Set when the call failed before answering.
                header_code: status_code(response.headers()),
            };
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                MeteredBody {
                    inner: body,
                    call: Some(call),
                },
            ))
        })
    }
}

/// A call whose status is not recorded yet.
struct Call {
    metrics: FlightMetrics,
    method: &'static str,
    command: CommandSlot,
    start: Instant,
    header_code: Option<&'static str>,
}

impl Call {
    fn finish(self, trailer_code: Option<&'static str>) {
        // Neither: the body was dropped before its trailers, as when the
        // client cancels or disconnects mid-stream.
        let code = trailer_code.or(self.header_code).unwrap_or("Cancelled");
        let command = self.command.0.get().copied().unwrap_or("");
        self.metrics
            .record(self.method, command, code, self.start.elapsed());
    }
}

/// A response body that records its call when the status goes out.
pub(crate) struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> MeteredBody<B> {
    fn finish(&mut self, code: Option<&'static str>) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(Some(code));
                }
            }
            // The stream broke without a status.
            Poll::Ready(Some(Err(_))) => self.finish(Some("Unknown")),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_flight_service_are_other() {
        assert_eq!(
            method_name("/arrow.flight.protocol.FlightService/DoGet"),
            "DoGet"
        );
        assert_eq!(
            method_name("/arrow.flight.protocol.FlightService/DoSomething"),
            "other"
        );
        assert_eq!(method_name("/grpc.health.v1.Health/Check"), "other");
    }

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        for (value, name) in [("0", "Ok"), ("5", "NotFound"), ("16", "Unauthenticated")] {
            headers.insert("grpc-status", value.parse().expect("ascii"));
            assert_eq!(status_code(&headers), Some(name));
        }
        headers.insert("grpc-status", "99".parse().expect("ascii"));
        assert_eq!(status_code(&headers), Some("Unknown"));
    }
}
