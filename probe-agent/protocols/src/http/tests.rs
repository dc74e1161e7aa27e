#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use super::*;

const EG: Direction = Direction::Egress;
const IN: Direction = Direction::Ingress;

/// A connection under test with its own clock: every call is 10 ns after
/// the one before.
struct Conn {
    c: HttpConnection,
    out: Vec<HttpExchange>,
    t: u64,
}

impl Conn {
    fn new(role: Role) -> Self {
        Conn::with(role, HttpConfig::default())
    }

    fn with(role: Role, config: HttpConfig) -> Self {
        Conn {
            c: HttpConnection::new(role, &config),
            out: Vec::new(),
            t: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.t += 10;
        self.t
    }

    /// One syscall's data.
    fn send(&mut self, d: Direction, bytes: &[u8]) {
        let t = self.tick();
        self.c.data(d, t, true, bytes, &mut self.out);
    }

    /// One syscall per piece of `sizes` bytes (the last takes the rest).
    fn send_split(&mut self, d: Direction, bytes: &[u8], size: usize) {
        for piece in bytes.chunks(size.max(1)) {
            self.send(d, piece);
        }
    }

    /// One syscall whose first `copied` bytes were copied.
    fn send_partly(&mut self, d: Direction, bytes: &[u8], copied: usize) {
        let t = self.tick();
        let copied = copied.min(bytes.len());
        self.c.data(d, t, true, &bytes[..copied], &mut self.out);
        self.c
            .gap(d, t, (bytes.len() - copied) as u64, &mut self.out);
    }

    fn close(&mut self) {
        let t = self.tick();
        self.c.close(t, &mut self.out);
    }

    fn rows(&mut self) -> Vec<HttpExchange> {
        std::mem::take(&mut self.out)
    }

    fn counters(&self) -> HttpCounters {
        *self.c.counters()
    }
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n").into_bytes()
}

fn paths(rows: &[HttpExchange]) -> Vec<(&str, u16)> {
    rows.iter()
        .map(|r| (r.req_path.as_str(), r.resp_status))
        .collect()
}

#[test]
fn keep_alive_exchanges_in_order() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/a"));
    assert!(c.rows().is_empty());
    assert_eq!(c.c.pending(), 1);
    c.send(IN, &response("200 OK", "hello"));
    c.send(EG, &get("/b?x=1"));
    c.send(IN, &response("404 Not Found", "missing"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/a", 200), ("/b?x=1", 404)]);
    let a = &rows[0];
    assert_eq!(a.req_method, "GET");
    assert_eq!(a.resp_message, "OK");
    assert_eq!(a.resp_body_size, 5);
    assert_eq!(a.req_body_size, 0);
    assert!(a.resp_body.is_empty(), "no body bytes kept by default");
    assert_eq!(a.req_headers, None);
    assert_eq!((a.major_version, a.minor_version), (1, 1));
    assert_eq!((a.req_start_ns, a.resp_end_ns, a.latency_ns), (10, 20, 10));
    assert!(a.complete);
    assert_eq!(a.incomplete_reason, None);
    assert_eq!(rows[1].resp_message, "Not Found");
    assert_eq!((rows[1].req_start_ns, rows[1].resp_end_ns), (30, 40));
    assert_eq!(c.c.pending(), 0);
    c.close();
    assert!(c.rows().is_empty());
    let counters = c.counters();
    assert_eq!(counters.exchanges, 2);
    assert_eq!(
        counters,
        HttpCounters {
            exchanges: 2,
            ..HttpCounters::default()
        }
    );
}

#[test]
fn statuses_and_versions() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"POST /submit HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
    c.send(
        IN,
        b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    );
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.req_method.as_str(), r.req_body_size), ("POST", 3));
    assert_eq!(
        (r.resp_status, r.resp_message.as_str()),
        (500, "Internal Server Error")
    );
    assert_eq!((r.major_version, r.minor_version), (1, 0));
    assert!(r.complete);
}

#[test]
fn pipelined_requests_then_responses() {
    let mut c = Conn::new(Role::Client);
    let mut requests = get("/1");
    requests.extend_from_slice(b"POST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody");
    requests.extend_from_slice(&get("/3"));
    c.send(EG, &requests);
    assert_eq!(c.c.pending(), 3);
    let mut responses = response("200 OK", "one");
    responses.extend_from_slice(&response("201 Created", ""));
    responses.extend_from_slice(&response("503 Service Unavailable", "three!"));
    c.send(IN, &responses);
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/1", 200), ("/2", 201), ("/3", 503)]);
    assert_eq!(rows[1].req_body_size, 4);
    assert_eq!(rows[2].resp_body_size, 6);
    assert!(
        rows.iter()
            .all(|r| r.complete && r.req_start_ns == 10 && r.resp_end_ns == 20)
    );
}

#[test]
fn heads_and_bodies_split_one_byte_per_call() {
    let config = HttpConfig {
        headers: true,
        body_bytes: 64,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    let request = b"PUT /item/7 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    c.send_split(EG, request, 1);
    assert_eq!(c.c.pending(), 1);
    let resp = response("200 OK", "stored");
    c.send_split(IN, &resp, 1);
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.req_method.as_str(), r.req_path.as_str()),
        ("PUT", "/item/7")
    );
    assert_eq!(r.req_headers.as_deref(), Some("Host: h\nContent-Length: 5"));
    assert_eq!(r.req_body, b"hello");
    assert_eq!(
        r.resp_headers.as_deref(),
        Some("Content-Type: text/plain\nContent-Length: 6")
    );
    assert_eq!(r.resp_body, b"stored");
    assert_eq!(r.req_start_ns, 10);
    assert_eq!(r.resp_end_ns, 10 * (request.len() + resp.len()) as u64);
    assert!(r.complete);
}

#[test]
fn every_split_point_gives_the_same_row() {
    let request = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 4;name=value\r\nWiki\r\n5\r\npedia\r\nE ; ext\r\n in\r\n\r\nchunks.\r\n\
                 0;last\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n";
    let config = HttpConfig {
        body_bytes: 1024,
        ..HttpConfig::default()
    };
    for split in 0..=resp.len() {
        let mut c = Conn::with(Role::Client, config);
        c.send(EG, request);
        c.send(IN, &resp[..split]);
        c.send(IN, &resp[split..]);
        c.send(EG, request);
        c.send(IN, b"HTTP/1.1 204 No Content\r\n\r\n");
        let rows = c.rows();
        assert_eq!(paths(&rows), [("/x", 200), ("/x", 204)], "split at {split}");
        assert_eq!(
            rows[0].resp_body, b"Wikipedia in\r\n\r\nchunks.",
            "split at {split}"
        );
        assert_eq!(rows[0].resp_body_size, 23);
        assert!(rows[0].complete);
        assert_eq!(c.counters().exchanges, 2);
    }
}

#[test]
fn chunked_response_one_byte_per_call_and_request_chunked() {
    let mut c = Conn::with(
        Role::Server,
        HttpConfig {
            body_bytes: 4,
            ..HttpConfig::default()
        },
    );
    // A server reads requests: a chunked upload.
    c.send_split(
        IN,
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        1,
    );
    assert_eq!(c.c.pending(), 1);
    c.send_split(
        EG,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        1,
    );
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].req_body_size, rows[0].req_body.as_slice()),
        (19, &b"abc0"[..])
    );
    assert_eq!(rows[0].resp_body_size, 2);
    assert!(rows[0].complete);
}

#[test]
fn one_mib_body_in_copied_prefixes_and_gaps() {
    let config = HttpConfig {
        body_bytes: 16,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    c.send(EG, &get("/big"));
    let body_len = 1 << 20;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n");
    let mut resp = head.into_bytes();
    resp.extend((0..body_len).map(|i| (i % 251) as u8));
    // 64 KiB per syscall, of which the first 4 KiB were copied.
    for call in resp.chunks(64 * 1024) {
        c.send_partly(IN, call, 4096);
    }
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.resp_body_size, body_len as u64);
    assert_eq!(r.resp_body, (0..16).collect::<Vec<u8>>());
    assert!(r.complete);
    assert_eq!(r.resp_end_ns, c.t);
    // The next exchange is still in sync.
    c.send(EG, &get("/next"));
    c.send(IN, &response("200 OK", "x"));
    assert_eq!(paths(&c.rows()), [("/next", 200)]);
    assert_eq!(c.counters().lost_sync, 0);
}

#[test]
fn gaps_inside_chunk_data_are_harmless() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/c"));
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2710\r\n".to_vec();
    resp.extend(std::iter::repeat_n(b'z', 10_000));
    resp.extend_from_slice(b"\r\n0\r\n\r\n");
    // The head, the size line and 100 bytes of data copied; 9,900 not.
    let copied = resp.len() - 7 - 9_900;
    let t = c.tick();
    c.c.data(IN, t, true, &resp[..copied], &mut c.out);
    c.c.gap(IN, t, 9_900, &mut c.out);
    c.c.data(IN, t + 1, true, &resp[resp.len() - 7..], &mut c.out);
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].resp_body_size, 10_000);
    assert!(rows[0].complete);
}

#[test]
fn gap_over_a_chunk_size_line_loses_sync_then_resyncs() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/c"));
    let mut call = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
    let copied = call.len();
    call.extend_from_slice(b"5\r\nworld\r\n0\r\n\r\n");
    c.send_partly(IN, &call, copied);
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].resp_status, 200);
    assert_eq!(rows[0].resp_body_size, 5);
    assert!(!rows[0].complete);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
    assert_eq!(c.counters().lost_sync, 1);
    // A call that does not start a response is ignored; the next that does
    // resyncs and pairs with the one request waiting.
    c.send(EG, &get("/d"));
    c.send(IN, b"more body, not a response");
    c.send(IN, &response("200 OK", "d"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/d", 200)]);
    assert!(rows[0].complete);
    assert_eq!(c.counters().lost_sync, 1);
    assert_eq!(c.counters().unparseable_heads, 0);
}

#[test]
fn gap_inside_a_request_head_then_resync() {
    let mut c = Conn::new(Role::Client);
    let mut request = b"GET /big-cookie HTTP/1.1\r\nHost: h\r\nCookie: ".to_vec();
    request.extend(std::iter::repeat_n(b'c', 8000));
    request.extend_from_slice(b"\r\n\r\n");
    c.send_partly(EG, &request, 4096);
    assert_eq!(c.counters().lost_sync, 1);
    // The request line was read: the request waits for its response.
    assert_eq!(c.c.pending(), 1);
    c.send(IN, &response("200 OK", "fine"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/big-cookie", 200)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
    assert_eq!(rows[0].resp_body_size, 4);
    // The next request starts a call: back in sync.
    c.send(EG, &get("/after"));
    c.send(IN, &response("200 OK", ""));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/after", 200)]);
    assert!(rows[0].complete);
    assert_eq!(c.counters().abandoned, 0);
}

#[test]
fn a_request_cut_inside_its_request_line_holds_its_place() {
    // Its method was read, not its target: no row, but its response is
    // known to be its own.
    let mut c = Conn::new(Role::Client);
    c.send_partly(EG, &get("/path-that-is-not-copied"), 6);
    assert_eq!(c.c.pending(), 1);
    c.send(IN, &response("200 OK", "?"));
    assert!(c.rows().is_empty());
    c.send(EG, &get("/ok"));
    c.send(IN, &response("200 OK", "ok"));
    assert_eq!(paths(&c.rows()), [("/ok", 200)]);
    let counters = c.counters();
    assert_eq!(
        (counters.lost_sync, counters.responses_without_request),
        (1, 0)
    );
    assert_eq!(counters.exchanges + counters.incomplete, 1);

    // Not even its method: was it HEAD? Its response's body length is not
    // knowable, so responses lose sync too, until the next response.
    let mut c = Conn::new(Role::Client);
    c.send_partly(EG, &get("/x"), 2);
    c.send(IN, &response("200 OK", "body"));
    assert_eq!(c.counters().lost_sync, 2);
    c.send(EG, &get("/ok"));
    c.send(IN, &response("200 OK", "ok"));
    assert_eq!(paths(&c.rows()), [("/ok", 200)]);
    // A bodiless answer needs no method.
    let mut c = Conn::new(Role::Client);
    c.send_partly(EG, &get("/x"), 2);
    c.send(
        IN,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    );
    c.send(EG, &get("/ok"));
    c.send(IN, &response("200 OK", "ok"));
    assert_eq!(paths(&c.rows()), [("/ok", 200)]);
    assert_eq!(c.counters().lost_sync, 1);
}

#[test]
fn whole_calls_lost_in_both_directions_abandon_pairing() {
    // /0 is read; its response and the next request go by uncopied: the
    // response that comes next may answer either.
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/0"));
    c.send_partly(IN, &response("200 OK", "zero"), 0);
    c.send_partly(EG, &get("/1"), 0);
    c.send(IN, &response("200 OK", "one"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/0", 0)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::Abandoned));
    assert_eq!(c.counters().abandoned, 1);
}

#[test]
fn a_lost_request_on_a_pipelining_connection_abandons_pairing() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/1"));
    c.send(EG, &get("/2"));
    c.send(IN, &response("200 OK", ""));
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/1", 200), ("/2", 200)]);
    // Nothing waits, but this client pipelines: a request lost whole may
    // still be answered after the next one is written.
    c.send_partly(EG, &get("/3"), 0);
    c.send(EG, &get("/4"));
    assert_eq!(c.counters().abandoned, 1);
    assert!(c.c.is_stopped());
}

#[test]
fn gap_inside_a_response_head_with_its_status_line() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/a"));
    let mut resp = b"HTTP/1.1 302 Found\r\nLocation: /b\r\nSet-Cookie: ".to_vec();
    resp.extend(std::iter::repeat_n(b's', 6000));
    resp.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    c.send_partly(IN, &resp, 4096);
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/a", 302)]);
    assert_eq!(rows[0].resp_message, "Found");
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
    c.send(EG, &get("/b"));
    c.send(IN, &response("200 OK", "b"));
    assert_eq!(paths(&c.rows()), [("/b", 200)]);
}

#[test]
fn head_and_bodiless_statuses() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n");
    // Content-Length of the body a GET would get; none follows.
    c.send(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    c.send(EG, &get("/gone"));
    c.send(IN, b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n");
    c.send(EG, &get("/cached"));
    c.send(
        IN,
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    c.send(EG, &get("/last"));
    c.send(IN, &response("200 OK", "body"));
    let rows = c.rows();
    assert_eq!(
        paths(&rows),
        [
            ("/file", 200),
            ("/gone", 204),
            ("/cached", 304),
            ("/last", 200)
        ]
    );
    assert_eq!(rows[0].req_method, "HEAD");
    assert_eq!(
        rows.iter().map(|r| r.resp_body_size).collect::<Vec<_>>(),
        [0, 0, 0, 4]
    );
    assert!(rows.iter().all(|r| r.complete));
}

#[test]
fn continue_interim_response() {
    let mut c = Conn::new(Role::Client);
    c.send(
        EG,
        b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n",
    );
    c.send(IN, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(c.rows().is_empty());
    c.send(EG, b"abcdef");
    c.send(IN, &response("201 Created", "done"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/upload", 201)]);
    assert_eq!((rows[0].req_body_size, rows[0].resp_body_size), (6, 4));
    assert_eq!(rows[0].latency_ns, 30);
    assert!(rows[0].complete);
    assert_eq!(c.counters().responses_without_request, 0);
}

#[test]
fn early_response_waits_for_the_request_body() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"POST /big HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234");
    c.send(IN, &response("413 Payload Too Large", ""));
    assert!(c.rows().is_empty(), "the request is not over yet");
    c.send(EG, b"56789");
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/big", 413)]);
    assert_eq!(rows[0].req_body_size, 10);
    assert!(rows[0].complete);
}

#[test]
fn close_mid_response_gives_a_flagged_row() {
    let config = HttpConfig {
        body_bytes: 100,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    c.send(EG, &get("/slow"));
    c.send(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    c.close();
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/slow", 200)]);
    let r = &rows[0];
    assert!(!r.complete);
    assert_eq!(
        r.incomplete_reason,
        Some(IncompleteReason::ClosedMidMessage)
    );
    assert_eq!(
        (r.resp_body_size, r.resp_body.as_slice()),
        (7, &b"partial"[..])
    );
    assert_eq!(r.resp_end_ns, 20, "the last response byte, not the close");
    let counters = c.counters();
    assert_eq!((counters.closed_mid_message, counters.incomplete), (1, 1));
    assert_eq!(counters.exchanges, 0);
    // Calls after the close do nothing.
    c.send(IN, &response("200 OK", ""));
    assert!(c.rows().is_empty());
    assert!(c.c.is_stopped());
}

#[test]
fn close_mid_response_head_and_mid_request_body() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/a"));
    c.send(IN, b"HTTP/1.1 200 OK\r\nContent-");
    c.close();
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/a", 0)]);
    assert_eq!(
        rows[0].incomplete_reason,
        Some(IncompleteReason::ClosedMidMessage)
    );

    let mut c = Conn::new(Role::Client);
    c.send(EG, b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n123");
    c.close();
    let rows = c.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].req_body_size, 3);
    assert_eq!(
        rows[0].incomplete_reason,
        Some(IncompleteReason::ClosedMidMessage)
    );
    assert_eq!(c.counters().no_response, 0);
}

#[test]
fn close_with_requests_waiting() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/1"));
    c.send(EG, &get("/2"));
    c.send(IN, &response("200 OK", "one"));
    c.close();
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/1", 200), ("/2", 0)]);
    let r = &rows[1];
    assert!(!r.complete);
    assert_eq!(r.incomplete_reason, Some(IncompleteReason::NoResponse));
    assert_eq!(r.incomplete_reason.unwrap().as_str(), "no response");
    assert_eq!((r.resp_end_ns, r.latency_ns), (0, 0));
    assert_eq!((r.major_version, r.minor_version), (1, 1));
    let counters = c.counters();
    assert_eq!(
        (
            counters.exchanges,
            counters.incomplete,
            counters.no_response
        ),
        (1, 1, 1)
    );
}

#[test]
fn body_until_close() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"GET /stream HTTP/1.0\r\n\r\n");
    c.send(
        IN,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome",
    );
    c.send_partly(IN, b" more bytes", 3);
    assert!(c.rows().is_empty());
    c.close();
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/stream", 200)]);
    assert_eq!(rows[0].resp_body_size, 15);
    assert!(rows[0].complete);
    assert_eq!(c.counters().closed_mid_message, 0);
}

#[test]
fn response_without_request() {
    let mut c = Conn::new(Role::Client);
    c.send(IN, &response("408 Request Timeout", "bye"));
    assert!(c.rows().is_empty());
    assert_eq!(c.counters().responses_without_request, 1);
    c.send(EG, &get("/x"));
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/x", 200)]);
}

#[test]
fn unknown_role_is_inferred() {
    // A request written: a client.
    let mut c = Conn::new(Role::Unknown);
    c.send(EG, &get("/c"));
    assert_eq!(c.c.role(), Role::Client);
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/c", 200)]);

    // A request read: a server; its head arriving a byte per call.
    let mut c = Conn::new(Role::Unknown);
    c.send_split(IN, b"HEAD /s HTTP/1.1\r\n\r\n", 1);
    assert_eq!(c.c.role(), Role::Server);
    c.send(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
    assert_eq!(paths(&c.rows()), [("/s", 200)]);

    // A response read first: a client whose request went unseen.
    let mut c = Conn::new(Role::Unknown);
    c.send(IN, &response("200 OK", "late"));
    assert_eq!(c.c.role(), Role::Client);
    assert_eq!(c.counters().responses_without_request, 1);
    c.send(EG, &get("/next"));
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/next", 200)]);
}

#[test]
fn server_role_pairs_read_requests_with_written_responses() {
    let mut c = Conn::new(Role::Server);
    c.send(IN, &get("/srv"));
    c.send(EG, &response("200 OK", "served"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/srv", 200)]);
    assert_eq!(rows[0].resp_body_size, 6);
    // A server's written bytes are responses: a request there is not valid.
    c.send(EG, &get("/wrong-way"));
    assert_eq!(c.counters().unparseable_heads, 1);
    assert!(c.rows().is_empty());
}

#[test]
fn non_http_bytes_are_counted_once_and_give_no_row() {
    let mut c = Conn::new(Role::Client);
    // A TLS ClientHello, then more of the same stream.
    c.send(EG, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    c.send(EG, b"\x17\x03\x03\x00\x20 encrypted");
    c.send(IN, b"\x16\x03\x03\x00\x7a\x02");
    c.close();
    assert!(c.rows().is_empty());
    let counters = c.counters();
    assert_eq!(counters.unparseable_heads, 2, "once per direction");
    assert_eq!(counters.exchanges + counters.incomplete, 0);

    // HTTP/2's preface is not HTTP/1.x either.
    let mut c = Conn::new(Role::Unknown);
    c.send(EG, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(c.counters().unparseable_heads, 1);
    assert!(c.rows().is_empty());
}

#[test]
fn bytes_at_a_message_start_that_are_not_http_resync_later() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"garbage\r\n\r\n");
    c.send(EG, &get("/ok"));
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/ok", 200)]);
    assert_eq!(c.counters().unparseable_heads, 1);
}

#[test]
fn head_too_long_loses_sync() {
    let config = HttpConfig {
        max_head_bytes: 64,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    let mut request = b"GET /long HTTP/1.1\r\nX-Long: ".to_vec();
    request.extend(std::iter::repeat_n(b'x', 100));
    request.extend_from_slice(b"\r\n\r\n");
    c.send(EG, &request);
    assert_eq!(c.counters().heads_too_long, 1);
    // Its request line was read: it still pairs with its response.
    c.send(IN, &response("431 Request Header Fields Too Large", ""));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/long", 431)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
}

#[test]
fn bad_content_length_is_unparseable() {
    let mut c = Conn::new(Role::Client);
    c.send(
        EG,
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert_eq!(c.counters().unparseable_heads, 1);
    c.send(IN, &response("400 Bad Request", ""));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/a", 400)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));

    // Repeated equal values are one length.
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"POST /b HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab");
    c.send(IN, &response("200 OK", ""));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/b", 200)]);
    assert!(rows[0].complete);
}

#[test]
fn upgrade_stops_parsing() {
    let mut c = Conn::new(Role::Client);
    c.send(
        EG,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    c.send(
        IN,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    c.send(EG, b"\x81\x85\x00\x00\x00\x00hello");
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/ws", 101)]);
    assert!(rows[0].complete);
    assert!(c.c.is_stopped());
    assert_eq!(c.counters().upgrades, 1);
    assert_eq!(c.counters().unparseable_heads, 0);

    let mut c = Conn::new(Role::Client);
    c.send(
        EG,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    c.send(IN, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    c.send(EG, b"\x16\x03\x01\x00\x10");
    let rows = c.rows();
    assert_eq!(paths(&rows), [("example.com:443", 200)]);
    assert_eq!(c.counters().upgrades, 1);
    assert_eq!(c.counters().unparseable_heads, 0);
}

#[test]
fn pending_overflow_keeps_the_order() {
    let config = HttpConfig {
        max_pending: 2,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    for path in ["/1", "/2", "/3", "/4"] {
        c.send(EG, &get(path));
    }
    assert_eq!(c.counters().pending_overflow, 2);
    for status in ["200 OK", "201 Created", "202 Accepted", "203 X"] {
        c.send(IN, &response(status, ""));
    }
    assert_eq!(paths(&c.rows()), [("/1", 200), ("/2", 201)]);
    c.send(EG, &get("/5"));
    c.send(IN, &response("204 No Content", ""));
    assert_eq!(paths(&c.rows()), [("/5", 204)]);
    assert_eq!(c.counters().responses_without_request, 0);
}

#[test]
fn response_resync_with_several_waiting_abandons_pairing() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/1"));
    c.send(EG, &get("/2"));
    c.send(EG, &get("/3"));
    let mut call = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let copied = call.len();
    call.extend_from_slice(b"3\r\none\r\n0\r\n\r\n");
    call.extend_from_slice(&response("200 OK", "two"));
    c.send_partly(IN, &call, copied);
    // /1 is known to be answered, flagged; /2 and /3 wait.
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/1", 200)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
    // Is this /2's response or /3's? Not knowable: pairing stops.
    c.send(IN, &response("200 OK", "three"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/2", 0), ("/3", 0)]);
    assert!(
        rows.iter()
            .all(|r| r.incomplete_reason == Some(IncompleteReason::Abandoned))
    );
    assert_eq!(c.counters().abandoned, 1);
    assert!(c.c.is_stopped());
}

#[test]
fn request_resync_with_a_response_due_abandons_pairing() {
    let mut c = Conn::new(Role::Client);
    let mut call = b"POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let copied = call.len();
    // Unseen: the rest of /1 and a pipelined /2.
    call.extend_from_slice(b"1\r\na\r\n0\r\n\r\n");
    call.extend_from_slice(&get("/2"));
    c.send_partly(EG, &call, copied);
    assert_eq!(c.counters().lost_sync, 1);
    c.send(EG, &get("/3"));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/1", 0)]);
    assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
    assert_eq!(c.counters().abandoned, 1);
}

#[test]
fn counters_read_and_reset() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/1"));
    c.send(IN, &response("200 OK", ""));
    let before = *c.c.counters();
    c.send(IN, &response("200 OK", ""));
    let delta = c.c.counters().delta(&before);
    assert_eq!(
        delta,
        HttpCounters {
            responses_without_request: 1,
            ..HttpCounters::default()
        }
    );
    let mut total = HttpCounters::default();
    total += c.c.take_counters();
    assert_eq!((total.exchanges, total.responses_without_request), (1, 1));
    assert_eq!(*c.c.counters(), HttpCounters::default());
}

#[test]
fn data_pieces_of_one_call_do_not_resync() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/a"));
    c.send_partly(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde", 20);
    assert_eq!(paths(&c.rows()), [("/a", 200)]);
    c.send(EG, &get("/b"));
    // The second piece of a call begins like a response; only call starts
    // count.
    let t = c.tick();
    c.c.data(IN, t, true, b"xx", &mut c.out);
    c.c.data(IN, t, false, &response("200 OK", ""), &mut c.out);
    assert!(c.rows().is_empty());
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/b", 200)]);
}

#[test]
fn leading_blank_lines_between_messages_are_skipped() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n");
    c.send(IN, &response("200 OK", ""));
    c.send(EG, &get("/b"));
    c.send(IN, &response("200 OK", ""));
    assert_eq!(paths(&c.rows()), [("/a", 200), ("/b", 200)]);
    assert_eq!(c.counters().unparseable_heads, 0);
}

#[test]
fn many_headers_parse_past_the_stack_array() {
    let config = HttpConfig {
        headers: true,
        ..HttpConfig::default()
    };
    let mut c = Conn::with(Role::Client, config);
    let mut request = b"GET /h HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        request.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    c.send(EG, &request);
    c.send(IN, &response("200 OK", ""));
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/h", 200)]);
    assert_eq!(rows[0].req_headers.as_deref().unwrap().lines().count(), 200);
}

#[test]
fn bare_lf_line_endings() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"GET /lf HTTP/1.1\nHost: h\n\n");
    c.send_split(
        IN,
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
        1,
    );
    let rows = c.rows();
    assert_eq!(paths(&rows), [("/lf", 200)]);
    assert_eq!(rows[0].resp_body_size, 3);
    assert!(rows[0].complete);
}

#[test]
fn malformed_chunk_lines_lose_sync() {
    for body in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"11111111111111111\r\n",
        b"3\r\nabcX",
    ] {
        let mut c = Conn::new(Role::Client);
        c.send(EG, &get("/c"));
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        resp.extend_from_slice(body);
        c.send(IN, &resp);
        let rows = c.rows();
        assert_eq!(paths(&rows), [("/c", 200)], "{body:?}");
        assert_eq!(rows[0].incomplete_reason, Some(IncompleteReason::LostSync));
        assert_eq!(c.counters().unparseable_heads, 1);
    }
}

#[test]
fn a_gap_right_after_a_message_loses_the_next_start() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, &get("/1"));
    // One call: a whole response, then 100 bytes not copied (the start of
    // a next response that nothing asked for yet).
    let resp = response("200 OK", "x");
    let t = c.tick();
    c.c.data(IN, t, true, &resp, &mut c.out);
    c.c.gap(IN, t, 100, &mut c.out);
    assert_eq!(paths(&c.rows()), [("/1", 200)]);
    assert_eq!(c.counters().lost_sync, 1);
    c.send(EG, &get("/2"));
    c.send(IN, &response("200 OK", "y"));
    assert_eq!(paths(&c.rows()), [("/2", 200)]);
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Exchange `i`: a request for `/i` and a response whose reason phrase is
/// `R{i}`, with a body framed one of several ways.
fn exchange(rng: &mut Rng, i: usize) -> (Vec<u8>, Vec<u8>) {
    let body: String = (0..rng.below(3000))
        .map(|k| (b'a' + (k % 26) as u8) as char)
        .collect();
    let request = match rng.below(4) {
        0 => format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n"),
        1 => format!("HEAD /{i} HTTP/1.1\r\n\r\n"),
        2 => format!(
            "POST /{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        _ => format!(
            "PUT /{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x};e=1\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
    };
    let head_only = request.starts_with("HEAD");
    let response = match rng.below(4) {
        0 => format!("HTTP/1.1 204 R{i}\r\n\r\n"),
        1 if !head_only => format!(
            "HTTP/1.1 200 R{i}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nT: 1\r\n\r\n",
            body.len()
        ),
        _ if head_only => format!("HTTP/1.1 200 R{i}\r\nContent-Length: 77\r\n\r\n"),
        _ => format!(
            "HTTP/1.1 200 R{i}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    };
    (request.into_bytes(), response.into_bytes())
}

/// Feeds `msg` as calls of random sizes, each copied in full or, with
/// `gap_chance` in 100, only a random prefix of it.
fn feed(c: &mut Conn, rng: &mut Rng, d: Direction, msg: &[u8], gap_chance: u64) {
    let mut rest = msg;
    while !rest.is_empty() {
        let len = (1 + rng.below(2000) as usize).min(rest.len());
        let (call, tail) = rest.split_at(len);
        if rng.below(100) < gap_chance {
            let copied = rng.below(call.len() as u64) as usize;
            c.send_partly(d, call, copied);
        } else {
            c.send(d, call);
        }
        rest = tail;
    }
}

/// Every row that has a response has the right one.
fn check_pairing(rows: &[HttpExchange], seed: u64) {
    for r in rows {
        if r.resp_status != 0 {
            assert_eq!(
                format!("/{}", &r.resp_message[1..]),
                r.req_path,
                "seed {seed}: wrong pairing: {r:?}"
            );
        }
    }
}

#[test]
fn random_calls_and_gaps_never_pair_wrongly() {
    for seed in 1..=600u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let gap_chance = [0, 5, 30][seed as usize % 3];
        let pipelined = seed % 2 == 0;
        let mut c = Conn::new(if seed % 5 == 0 {
            Role::Unknown
        } else {
            Role::Client
        });
        let n = 12;
        let exchanges: Vec<_> = (0..n).map(|i| exchange(&mut rng, i)).collect();
        if pipelined {
            // Each request its own calls, then each response.
            // The first two whole, so pipelining shows before any loss.
            for (i, (req, _)) in exchanges.iter().enumerate() {
                feed(
                    &mut c,
                    &mut rng,
                    EG,
                    req,
                    if i < 2 { 0 } else { gap_chance },
                );
            }
            for (_, resp) in &exchanges {
                feed(&mut c, &mut rng, IN, resp, gap_chance);
            }
        } else {
            for (req, resp) in &exchanges {
                feed(&mut c, &mut rng, EG, req, gap_chance);
                feed(&mut c, &mut rng, IN, resp, gap_chance);
            }
        }
        c.close();
        let rows = c.rows();
        check_pairing(&rows, seed);
        let counters = c.counters();
        assert_eq!(
            counters.exchanges + counters.incomplete,
            rows.len() as u64,
            "seed {seed}"
        );
        if gap_chance == 0 {
            assert_eq!(rows.len(), n, "seed {seed}");
            assert!(rows.iter().all(|r| r.complete), "seed {seed}");
            assert_eq!(counters.exchanges, n as u64);
        }
    }
}

#[test]
fn close_mid_request_head_gives_no_row() {
    let mut c = Conn::new(Role::Client);
    c.send(EG, b"GET /never-fin");
    c.close();
    assert!(c.rows().is_empty());
    let counters = c.counters();
    assert_eq!((counters.closed_mid_message, counters.incomplete), (1, 0));
}

#[test]
fn defaults_and_directions() {
    let config = HttpConfig::default();
    assert!(!config.headers);
    assert_eq!(config.body_bytes, 0);
    assert_eq!(config.max_head_bytes, 16 * 1024);
    assert_eq!(config.max_pending, 64);
    assert_eq!(Direction::Egress.reverse(), Direction::Ingress);
    assert_eq!(Role::default(), Role::Unknown);
    assert_eq!(
        IncompleteReason::ClosedMidMessage.to_string(),
        "closed mid-message"
    );
}
