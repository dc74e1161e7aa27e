//! HTTP/1.x: requests paired with their responses, one [`HttpConnection`]
//! per traced connection.
//!
//! Requests are the bytes the client writes (so [`Direction::Egress`] for a
//! [`Role::Client`], [`Direction::Ingress`] for a [`Role::Server`]); each
//! request whose head is read joins a FIFO queue, and each final response
//! completes the oldest request still waiting for one (HTTP/1.1 keep-alive
//! and pipelining). An exchange becomes an [`HttpExchange`] row once both
//! its request and its final response have ended, or when the connection
//! closes, or when the parser can no longer tell which response answers it.
//!
//! # Rows
//!
//! Every row names a request whose method and target were read. `complete`
//! rows hold the whole request and its final response. The others carry an
//! [`IncompleteReason`]:
//!
//! - [`IncompleteReason::NoResponse`]: the connection closed while the
//!   request was still waiting for its response (no byte of one was seen).
//!   This is the one flag such rows get; their response fields are empty
//!   (`resp_status` 0, `resp_end_ns` 0, `latency_ns` 0).
//! - [`IncompleteReason::ClosedMidMessage`]: the connection closed in the
//!   middle of the request or of its response; the row holds what was read
//!   (`resp_end_ns` is the time of the last response byte read).
//! - [`IncompleteReason::LostSync`]: bytes the parser needed were not
//!   captured, or a head was refused (too long, not valid HTTP, body length
//!   not knowable), while reading the request or its response; the row holds
//!   what was read (a response known only by its status line has that).
//! - [`IncompleteReason::Abandoned`]: the parser gave up pairing on this
//!   connection (see below) or the connection switched protocols, before
//!   this request's response was read.
//!
//! A request keeps the first reason it got. The response of a row is
//! always that request's own: when that cannot be known, there is no
//! response in the row, or no row.
//!
//! # Losing sync
//!
//! When a direction loses sync (see the crate documentation), the message
//! it was reading ends with [`IncompleteReason::LostSync`], and the
//! direction resynchronizes at the next call whose data begins with a known
//! method token and a space (requests) or `HTTP/1.` (responses) and which
//! `httparse` accepts as far as it goes.
//!
//! A request known to have begun keeps its place in the order: one cut in
//! its head joins the queue as a [`IncompleteReason::LostSync`] row when
//! its method and target were read, or else as a placeholder that takes its
//! response's place and gives no row; so does a request that began in
//! bytes not copied at all (a gap between messages). A response to a
//! request whose method is not known (HEAD has no body) that declares a
//! body costs the responses their sync.
//!
//! Pairing then goes on only where it stays certain:
//!
//! - after responses lost sync, the first response read again answers the
//!   only request still waiting, if exactly one is and no request may have
//!   gone by unseen (requests out of sync); if none is, it counts as a
//!   response without a request; otherwise some responses may have gone by
//!   unseen, and pairing is abandoned;
//! - after requests lost sync, requests may have gone by unseen, beginning
//!   in the middle of a call in the lost stretch; a client that does not
//!   pipeline had their responses before it wrote the next request read.
//!   So when requests resynchronize, pairing is abandoned if a request is
//!   still waiting for its response or if the connection ever had two
//!   requests waiting at once (pipelining, or a response missed).
//!
//! One case remains out of reach: a client that pipelines for the first
//! time inside a stretch its requests lost (a request beginning in the
//! middle of a call there) with that request still unanswered when the
//! requests resynchronize; its response would complete the next request.
//! HTTP/1.1 clients rarely pipeline.
//!
//! Abandoning pairing ends the connection's parsing: its waiting requests
//! become [`IncompleteReason::Abandoned`] rows and later bytes are ignored.
//! The same happens after `101 Switching Protocols` or a `2xx` answer to
//! `CONNECT` (the connection is no longer HTTP; counted in
//! [`HttpCounters::upgrades`]).
//!
//! # Non-HTTP bytes
//!
//! Bytes that cannot begin an HTTP/1.x message where one is expected
//! (including HTTP/2's preface and TLS records) give no row and count once
//! in [`HttpCounters::unparseable_heads`]; the direction then waits for a
//! message start, ignoring (not counting) everything until one. (The agent
//! feeds only connections whose first bytes look like HTTP, so such bytes
//! are mostly filtered before.)

mod framer;
mod head;

use std::{collections::VecDeque, fmt, ops::AddAssign};

use self::{
    framer::{Framer, Framing, Loss, LostAt, Step},
    head::{
        BodyHeaders, HeadError, Kind, PartialRequestLine, RequestHead, ResponseHead, kind_of_head,
        parse_request, parse_response, partial_head_ok, request_line, status_line,
    },
};
use crate::stream::{Direction, Role};

/// What an [`HttpConnection`] keeps and how far it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Keep each message's headers as text ("Name: value" lines joined by
    /// "\n"). Default false.
    pub headers: bool,
    /// Keep the first this many bytes of each body. Default 0.
    pub body_bytes: usize,
    /// Refuse heads (and chunk-size lines, and trailer sections) longer than
    /// this. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Requests that may wait for their responses at once; later ones are
    /// not kept (but still paired, to keep the order). Default 64.
    pub max_pending: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            headers: false,
            body_bytes: 0,
            max_head_bytes: 16 * 1024,
            max_pending: 64,
        }
    }
}

/// Why an [`HttpExchange`] is not complete; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncompleteReason {
    /// The connection closed while the request waited for its response.
    NoResponse,
    /// The connection closed in the middle of the request or its response.
    ClosedMidMessage,
    /// The request or its response lost sync (gap, head refused).
    LostSync,
    /// Pairing was given up on this connection before the response came.
    Abandoned,
}

impl IncompleteReason {
    /// A short name: "no response", "closed mid-message", "lost sync",
    /// "abandoned".
    pub fn as_str(self) -> &'static str {
        match self {
            IncompleteReason::NoResponse => "no response",
            IncompleteReason::ClosedMidMessage => "closed mid-message",
            IncompleteReason::LostSync => "lost sync",
            IncompleteReason::Abandoned => "abandoned",
        }
    }
}

impl fmt::Display for IncompleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request and its response: one row of the HTTP table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpExchange {
    pub req_method: String,
    /// The request target as sent (path and query, or an absolute URI).
    pub req_path: String,
    /// The request's headers, when [`HttpConfig::headers`].
    pub req_headers: Option<String>,
    /// Bytes of the request body (decoded length for a chunked body).
    pub req_body_size: u64,
    /// The first [`HttpConfig::body_bytes`] bytes of the request body (fewer
    /// if a gap came first).
    pub req_body: Vec<u8>,
    /// The final response's status; 0 without a response.
    pub resp_status: u16,
    /// The final response's reason phrase.
    pub resp_message: String,
    pub resp_headers: Option<String>,
    pub resp_body_size: u64,
    pub resp_body: Vec<u8>,
    /// The response's HTTP version, or the request's without a response.
    pub major_version: u8,
    pub minor_version: u8,
    /// Time of the call that carried the request's first byte.
    pub req_start_ns: u64,
    /// Time of the call that carried the response's last byte; 0 without a
    /// response.
    pub resp_end_ns: u64,
    /// `resp_end_ns - req_start_ns` (saturating); 0 without a response.
    pub latency_ns: u64,
    /// Whether the whole request and its final response were read.
    pub complete: bool,
    /// Why not, when not complete.
    pub incomplete_reason: Option<IncompleteReason>,
}

/// What happened on HTTP connections, by reason. Each field only grows; the
/// agent adds a connection's counters into its Prometheus counters with
/// [`HttpConnection::take_counters`] (read and reset) or keeps a copy and
/// takes [`HttpCounters::delta`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpCounters {
    /// Complete exchanges emitted (rows with `complete`).
    pub exchanges: u64,
    /// Incomplete exchanges emitted (rows with an `incomplete_reason`).
    pub incomplete: u64,
    /// Heads (or chunk-size lines, or message starts) that are not valid
    /// HTTP/1.x or whose body length cannot be known; each costs the
    /// direction its sync.
    pub unparseable_heads: u64,
    /// Heads (or chunk-size lines, or trailer sections) longer than
    /// [`HttpConfig::max_head_bytes`]; each costs the direction its sync.
    pub heads_too_long: u64,
    /// Gaps that covered bytes the parser needed (a head, a chunk-size line
    /// or the start of a message), and responses whose body length depends
    /// on a request method that was not read; each costs the direction its
    /// sync.
    pub lost_sync: u64,
    /// Final responses with no request to pair with for certain; no row.
    pub responses_without_request: u64,
    /// Requests not kept because [`HttpConfig::max_pending`] requests were
    /// already waiting; their responses are skipped; no row.
    pub pending_overflow: u64,
    /// Closes in the middle of a request or response (head or body; a body
    /// delimited by the close is not counted).
    pub closed_mid_message: u64,
    /// Requests still waiting for their response at close (rows flagged
    /// [`IncompleteReason::NoResponse`]).
    pub no_response: u64,
    /// Connections that switched protocols (`101`, or `CONNECT` answered
    /// `2xx`) and stopped being parsed.
    pub upgrades: u64,
    /// Connections on which pairing was given up because sync was lost
    /// while responses could no longer be matched for certain.
    pub abandoned: u64,
}

impl HttpCounters {
    /// What grew since `earlier` (a copy taken before).
    pub fn delta(&self, earlier: &HttpCounters) -> HttpCounters {
        HttpCounters {
            exchanges: self.exchanges.saturating_sub(earlier.exchanges),
            incomplete: self.incomplete.saturating_sub(earlier.incomplete),
            unparseable_heads: self
                .unparseable_heads
                .saturating_sub(earlier.unparseable_heads),
            heads_too_long: self.heads_too_long.saturating_sub(earlier.heads_too_long),
            lost_sync: self.lost_sync.saturating_sub(earlier.lost_sync),
            responses_without_request: self
                .responses_without_request
                .saturating_sub(earlier.responses_without_request),
            pending_overflow: self
                .pending_overflow
                .saturating_sub(earlier.pending_overflow),
            closed_mid_message: self
                .closed_mid_message
                .saturating_sub(earlier.closed_mid_message),
            no_response: self.no_response.saturating_sub(earlier.no_response),
            upgrades: self.upgrades.saturating_sub(earlier.upgrades),
            abandoned: self.abandoned.saturating_sub(earlier.abandoned),
        }
    }
}

impl AddAssign<&HttpCounters> for HttpCounters {
    fn add_assign(&mut self, other: &HttpCounters) {
        self.exchanges += other.exchanges;
        self.incomplete += other.incomplete;
        self.unparseable_heads += other.unparseable_heads;
        self.heads_too_long += other.heads_too_long;
        self.lost_sync += other.lost_sync;
        self.responses_without_request += other.responses_without_request;
        self.pending_overflow += other.pending_overflow;
        self.closed_mid_message += other.closed_mid_message;
        self.no_response += other.no_response;
        self.upgrades += other.upgrades;
        self.abandoned += other.abandoned;
    }
}

impl AddAssign for HttpCounters {
    fn add_assign(&mut self, other: HttpCounters) {
        *self += &other;
    }
}

/// One traced connection's HTTP/1.x parser. Feed it every call of the
/// connection, in order per direction (and, across directions, in the order
/// the calls happened), then [`HttpConnection::close`]. Finished exchanges
/// are pushed onto the `out` vector each call takes (the caller drains and
/// reuses it).
#[derive(Debug)]
pub struct HttpConnection {
    /// Indexed by [`Direction::index`].
    framers: [Framer; 2],
    core: Core,
}

impl HttpConnection {
    pub fn new(role: Role, config: &HttpConfig) -> Self {
        HttpConnection {
            framers: [Framer::new(), Framer::new()],
            core: Core {
                config: *config,
                role,
                pending: VecDeque::new(),
                dropped: 0,
                dropped_special: 0,
                req_target: ReqTarget::None,
                resp_target: RespTarget::None,
                resp_resync: false,
                req_resync: false,
                pipelined: false,
                stopped: false,
                counters: HttpCounters::default(),
            },
        }
    }

    /// Contiguous bytes the process moved. `call_start` is whether they
    /// begin a syscall's data (a syscall's data may come in several pieces;
    /// only the first starts the call): a direction out of sync resyncs
    /// only there.
    pub fn data(
        &mut self,
        direction: Direction,
        time_ns: u64,
        call_start: bool,
        bytes: &[u8],
        out: &mut Vec<HttpExchange>,
    ) {
        let d = direction.index();
        let mut pos = 0;
        while !self.core.stopped {
            let kind = self.core.kind(direction);
            let max_head = self.core.config.max_head_bytes;
            match self.framers[d].next(kind, bytes, &mut pos, call_start, time_ns, max_head) {
                Step::Done => break,
                Step::Resync => self.core.on_resync(direction, out),
                Step::Head { head, start_ns } => {
                    let decision = self.core.on_head(direction, head, start_ns, time_ns, out);
                    self.apply(direction, decision, time_ns, out);
                }
                Step::Body(body) => self.core.on_body(direction, body, 0, time_ns),
                Step::BodyGap(n) => self.core.on_body(direction, &[], n, time_ns),
                Step::End => self.core.on_end(direction, time_ns, out),
                Step::Lost { loss, at, start_ns } => self
                    .core
                    .on_lost(direction, loss, at, start_ns, time_ns, out),
            }
        }
        self.stop_if_done();
    }

    /// `len` bytes the process moved that were not copied: the rest of the
    /// call whose data came last (or a whole call of which nothing was
    /// copied). Inside a body of known length they count as body bytes;
    /// anywhere else they cost the direction its sync.
    pub fn gap(
        &mut self,
        direction: Direction,
        time_ns: u64,
        len: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        let d = direction.index();
        let mut left = len;
        while !self.core.stopped {
            match self.framers[d].next_gap(&mut left) {
                Step::Done => break,
                Step::BodyGap(n) => self.core.on_body(direction, &[], n, time_ns),
                Step::End => self.core.on_end(direction, time_ns, out),
                Step::Lost { loss, at, start_ns } => self
                    .core
                    .on_lost(direction, loss, at, start_ns, time_ns, out),
                Step::Resync | Step::Head { .. } | Step::Body(_) => break,
            }
        }
        self.stop_if_done();
    }

    /// The connection closed: a body delimited by the close ends, every
    /// request left becomes a row (flagged [`IncompleteReason::NoResponse`],
    /// or [`IncompleteReason::ClosedMidMessage`] when its request or
    /// response was cut), and later calls are ignored.
    pub fn close(&mut self, time_ns: u64, out: &mut Vec<HttpExchange>) {
        if !self.core.stopped {
            for direction in [Direction::Egress, Direction::Ingress] {
                let framer = &self.framers[direction.index()];
                if framer.until_close() {
                    self.core.on_end(direction, time_ns, out);
                } else if let Some(in_body) = framer.in_message() {
                    self.core.on_close_mid_message(direction, in_body);
                }
            }
        }
        self.core.flush(out, None);
        self.core.stopped = true;
        self.stop_if_done();
    }

    /// The role, as given or as inferred from the first message.
    pub fn role(&self) -> Role {
        self.core.role
    }

    /// Whether the connection is no longer parsed (closed, switched
    /// protocols, or pairing abandoned): later calls do nothing, and the
    /// caller may drop it.
    pub fn is_stopped(&self) -> bool {
        self.core.stopped
    }

    /// Requests waiting for their response.
    pub fn pending(&self) -> usize {
        self.core.pending.len()
    }

    pub fn counters(&self) -> &HttpCounters {
        &self.core.counters
    }

    /// The counters, reset to zero.
    pub fn take_counters(&mut self) -> HttpCounters {
        std::mem::take(&mut self.core.counters)
    }

    fn apply(
        &mut self,
        direction: Direction,
        decision: Decision,
        time_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        let framer = &mut self.framers[direction.index()];
        match decision {
            Decision::Framing(framing) => {
                framer.set_framing(framing);
                if matches!(framing, Framing::NoBody | Framing::Length(0)) {
                    self.core.on_end(direction, time_ns, out);
                }
            }
            Decision::Desync => framer.desync(),
            Decision::Stop => self.core.stopped = true,
        }
    }

    fn stop_if_done(&mut self) {
        if self.core.stopped {
            for framer in &mut self.framers {
                if !framer.is_stopped() {
                    framer.stop();
                }
            }
        }
    }
}

/// What the connection tells the framer after a head.
#[derive(Clone, Copy, Debug)]
enum Decision {
    Framing(Framing),
    /// The head was refused: out of sync.
    Desync,
    /// The connection is no longer parsed.
    Stop,
}

/// Where the request being read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqTarget {
    /// No request is being read (or nothing of it is kept).
    None,
    /// The newest queue entry.
    Entry,
    /// Not kept: the queue was full.
    Dropped,
}

/// Where the response being read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespTarget {
    /// No response is being read, or it answers nothing known (interim,
    /// unpaired, or answering a request that was not kept).
    None,
    /// The oldest queue entry.
    Entry,
}

/// A request waiting for (or being read with) its response.
#[derive(Debug)]
struct Pending {
    x: HttpExchange,
    /// A request known only to have begun (its head was cut before its
    /// request line ended): it takes its response's place in the order but
    /// gives no row.
    placeholder: bool,
    /// Whether the method is known (it decides whether a response to HEAD
    /// or CONNECT has a body).
    method_known: bool,
    is_head: bool,
    is_connect: bool,
    req_done: bool,
    /// A final response's head (or status line) was read.
    resp_started: bool,
    resp_done: bool,
    /// Body bytes are still copied (no gap came first).
    req_capture: bool,
    resp_capture: bool,
}

impl Pending {
    /// Records a final response's head.
    fn start_response(&mut self, resp: ResponseHead, time_ns: u64) {
        self.resp_started = true;
        self.x.resp_status = resp.status;
        self.x.resp_message = resp.reason;
        self.x.resp_headers = resp.headers;
        self.x.major_version = 1;
        self.x.minor_version = resp.minor;
        self.x.resp_end_ns = time_ns;
    }
}

#[derive(Debug)]
struct Core {
    config: HttpConfig,
    role: Role,
    pending: VecDeque<Pending>,
    /// Requests not kept (queue full), all after those in `pending`.
    dropped: u64,
    /// How many of those were HEAD or CONNECT (their responses' framing
    /// differs).
    dropped_special: u64,
    req_target: ReqTarget,
    resp_target: RespTarget,
    /// Responses lost sync since the last response head.
    resp_resync: bool,
    /// Requests lost sync since the last request resync: requests may have
    /// gone by unseen after those queued.
    req_resync: bool,
    /// Two requests were waiting at once (or one was dropped): the client
    /// pipelines, or a response went by unseen.
    pipelined: bool,
    stopped: bool,
    counters: HttpCounters,
}

impl Core {
    fn kind(&self, direction: Direction) -> Option<Kind> {
        match (self.role, direction) {
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress) => {
                Some(Kind::Request)
            }
            (Role::Client, Direction::Ingress) | (Role::Server, Direction::Egress) => {
                Some(Kind::Response)
            }
            (Role::Unknown, _) => None,
        }
    }

    fn infer_role(&mut self, direction: Direction, kind: Kind) {
        if self.role == Role::Unknown {
            self.role = match (kind, direction) {
                (Kind::Request, Direction::Egress) | (Kind::Response, Direction::Ingress) => {
                    Role::Client
                }
                (Kind::Request, Direction::Ingress) | (Kind::Response, Direction::Egress) => {
                    Role::Server
                }
            };
        }
    }

    fn on_resync(&mut self, direction: Direction, out: &mut Vec<HttpExchange>) {
        if self.kind(direction) == Some(Kind::Request) && std::mem::take(&mut self.req_resync) {
            // Requests may have gone by unseen; their responses could
            // complete the requests read from now on, unless none is due:
            // a client that does not pipeline read them all before writing
            // this one.
            let waiting = self.dropped > 0 || self.pending.iter().any(|p| !p.resp_done);
            if waiting || self.pipelined {
                self.abandon(out);
            }
        }
    }

    fn on_head(
        &mut self,
        direction: Direction,
        head: &[u8],
        start_ns: u64,
        time_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) -> Decision {
        let kind = self.kind(direction).unwrap_or_else(|| kind_of_head(head));
        match kind {
            Kind::Request => match parse_request(head, self.config.headers) {
                Ok(req) => {
                    self.infer_role(direction, kind);
                    self.on_request_head(req, start_ns)
                }
                Err(e) => self.refuse_head(direction, kind, e, head, start_ns, time_ns, out),
            },
            Kind::Response => match parse_response(head, self.config.headers) {
                Ok(resp) => {
                    self.infer_role(direction, kind);
                    self.on_response_head(resp, time_ns, out)
                }
                Err(e) => self.refuse_head(direction, kind, e, head, start_ns, time_ns, out),
            },
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one call site, all context")]
    fn refuse_head(
        &mut self,
        direction: Direction,
        kind: Kind,
        error: HeadError,
        head: &[u8],
        start_ns: u64,
        time_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) -> Decision {
        if self.kind(direction).is_some() || error == HeadError::Framing {
            self.infer_role(direction, kind);
        }
        self.on_lost(
            direction,
            Loss::Unparseable,
            LostAt::Head(head),
            start_ns,
            time_ns,
            out,
        );
        if self.stopped {
            Decision::Stop
        } else {
            Decision::Desync
        }
    }

    fn on_request_head(&mut self, req: RequestHead, start_ns: u64) -> Decision {
        let is_connect = req.method == "CONNECT";
        let framing = if is_connect {
            // What follows is the tunnel, once the server agrees.
            Framing::NoBody
        } else if req.body.chunked == Some(true) {
            Framing::Chunked
        } else {
            Framing::Length(req.body.content_length.unwrap_or(0))
        };
        let x = HttpExchange {
            req_method: req.method,
            req_path: req.path,
            req_headers: req.headers,
            major_version: 1,
            minor_version: req.minor,
            req_start_ns: start_ns,
            ..HttpExchange::default()
        };
        self.enqueue(x, false, true, false);
        Decision::Framing(framing)
    }

    /// Queues a request whose head (or the start of it) was read, or counts
    /// it as dropped when the queue is full.
    fn enqueue(&mut self, x: HttpExchange, done: bool, method_known: bool, placeholder: bool) {
        let is_head = x.req_method == "HEAD";
        let is_connect = x.req_method == "CONNECT";
        if self.dropped > 0 || self.pending.iter().any(|p| !p.resp_done) {
            self.pipelined = true;
        }
        if self.dropped > 0 || self.pending.len() >= self.config.max_pending {
            self.counters.pending_overflow += 1;
            self.dropped += 1;
            if is_head || is_connect || !method_known {
                self.dropped_special += 1;
            }
            self.req_target = if done {
                ReqTarget::None
            } else {
                ReqTarget::Dropped
            };
            return;
        }
        self.pending.push_back(Pending {
            x,
            placeholder,
            method_known,
            is_head,
            is_connect,
            req_done: done,
            resp_started: false,
            resp_done: false,
            req_capture: true,
            resp_capture: true,
        });
        self.req_target = if done {
            ReqTarget::None
        } else {
            ReqTarget::Entry
        };
    }

    fn request_entry(&mut self) -> Option<&mut Pending> {
        match self.req_target {
            ReqTarget::Entry => self.pending.back_mut(),
            ReqTarget::None | ReqTarget::Dropped => None,
        }
    }

    fn response_entry(&mut self) -> Option<&mut Pending> {
        match self.resp_target {
            RespTarget::Entry => self.pending.front_mut(),
            RespTarget::None => None,
        }
    }

    /// The request a final response answers (a response without one is
    /// counted here), or `Err` when pairing was abandoned: responses lost
    /// sync while more than one request (counting the unseen ones that
    /// requests out of sync may hide) could be the one answered.
    fn pair_response(&mut self, out: &mut Vec<HttpExchange>) -> Result<Pairing, ()> {
        let waiting = self.pending.iter().filter(|p| !p.resp_started).count() as u64 + self.dropped;
        let unseen = u64::from(self.req_resync);
        if std::mem::take(&mut self.resp_resync) && waiting > 0 && waiting + unseen > 1 {
            // Responses to some of them may have gone by unseen.
            self.abandon(out);
            return Err(());
        }
        match self.pending.front() {
            Some(p) if !p.resp_started => Ok(Pairing::Entry {
                method: p.method_known.then_some((p.is_head, p.is_connect)),
            }),
            Some(_) => {
                self.counters.responses_without_request += 1;
                Ok(Pairing::Nothing)
            }
            None if self.dropped > 0 => {
                self.dropped -= 1;
                let special = self.dropped_special > 0;
                if self.dropped == 0 {
                    self.dropped_special = 0;
                }
                Ok(Pairing::Dropped { special })
            }
            None => {
                self.counters.responses_without_request += 1;
                Ok(Pairing::Nothing)
            }
        }
    }

    fn on_response_head(
        &mut self,
        resp: ResponseHead,
        time_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) -> Decision {
        self.resp_target = RespTarget::None;
        if (100..200).contains(&resp.status) && resp.status != 101 {
            // Interim: the final response is still to come.
            return Decision::Framing(Framing::NoBody);
        }
        let Ok(pairing) = self.pair_response(out) else {
            return Decision::Stop;
        };
        // What is known of the answered request's method: whether it was
        // HEAD, whether CONNECT.
        let method = match pairing {
            Pairing::Entry { method } => method,
            Pairing::Dropped { special: false } => Some((false, false)),
            // Some of the dropped requests were HEAD or CONNECT; a response
            // without a request may answer one that went by unseen.
            Pairing::Dropped { special: true } | Pairing::Nothing => None,
        };
        let (is_head, is_connect) = method.unwrap_or((false, false));
        let upgrade = resp.status == 101 || (is_connect && (200..300).contains(&resp.status));
        let framing = if upgrade || is_head || matches!(resp.status, 204 | 304) {
            Framing::NoBody
        } else {
            match (resp.body.chunked, resp.body.content_length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) | (None, None) => Framing::UntilClose,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        if method.is_none() && !matches!(framing, Framing::NoBody | Framing::Length(0)) {
            // A response to HEAD has no body, another has this one: its
            // length is not knowable, nor so where the next response
            // begins. (A tunnel after CONNECT is not told apart: its bytes
            // are not HTTP, or are HTTP paired in order.)
            self.counters.lost_sync += 1;
            if let Pairing::Entry { .. } = pairing
                && let Some(p) = self.pending.front_mut()
            {
                p.start_response(resp, time_ns);
                p.resp_done = true;
                p.x.incomplete_reason
                    .get_or_insert(IncompleteReason::LostSync);
            }
            self.resp_resync = true;
            self.emit_ready(out);
            return Decision::Desync;
        }
        if let Pairing::Entry { .. } = pairing {
            self.resp_target = RespTarget::Entry;
            if let Some(p) = self.pending.front_mut() {
                p.start_response(resp, time_ns);
            }
        }
        if upgrade {
            self.counters.upgrades += 1;
            self.on_end_response(time_ns, out);
            self.flush(out, Some(IncompleteReason::Abandoned));
            self.stopped = true;
            return Decision::Stop;
        }
        Decision::Framing(framing)
    }

    fn on_body(&mut self, direction: Direction, bytes: &[u8], gap: u64, time_ns: u64) {
        let limit = self.config.body_bytes;
        let entry = match self.kind(direction) {
            Some(Kind::Request) => self.request_entry().map(|p| {
                (
                    &mut p.x.req_body_size,
                    &mut p.x.req_body,
                    &mut p.req_capture,
                )
            }),
            Some(Kind::Response) => self.response_entry().map(|p| {
                p.x.resp_end_ns = time_ns;
                (
                    &mut p.x.resp_body_size,
                    &mut p.x.resp_body,
                    &mut p.resp_capture,
                )
            }),
            None => None,
        };
        let Some((size, body, capture)) = entry else {
            return;
        };
        *size += bytes.len() as u64 + gap;
        if gap > 0 {
            *capture = false;
        } else if *capture && body.len() < limit {
            let take = (limit - body.len()).min(bytes.len());
            body.extend_from_slice(&bytes[..take]);
        }
    }

    fn on_end(&mut self, direction: Direction, time_ns: u64, out: &mut Vec<HttpExchange>) {
        match self.kind(direction) {
            Some(Kind::Request) => {
                if let Some(p) = self.request_entry() {
                    p.req_done = true;
                }
                self.req_target = ReqTarget::None;
                self.emit_ready(out);
            }
            Some(Kind::Response) => self.on_end_response(time_ns, out),
            None => {}
        }
    }

    fn on_end_response(&mut self, time_ns: u64, out: &mut Vec<HttpExchange>) {
        if let Some(p) = self.response_entry() {
            p.resp_done = true;
            p.x.resp_end_ns = time_ns;
        }
        self.resp_target = RespTarget::None;
        self.emit_ready(out);
    }

    #[allow(clippy::too_many_arguments, reason = "one call site per step kind")]
    fn on_lost(
        &mut self,
        direction: Direction,
        loss: Loss,
        at: LostAt<'_>,
        start_ns: u64,
        time_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        // A head cut short counts as begun only if it is HTTP as far as it
        // goes (long heads are not checked as their bytes arrive).
        let loss = match at {
            LostAt::Head(partial)
                if loss != Loss::Unparseable && !partial_head_ok(self.kind(direction), partial) =>
            {
                Loss::Unparseable
            }
            _ => loss,
        };
        match loss {
            Loss::Gap => self.counters.lost_sync += 1,
            Loss::TooLong => self.counters.heads_too_long += 1,
            Loss::Unparseable => self.counters.unparseable_heads += 1,
        }
        if self.role == Role::Unknown
            && loss != Loss::Unparseable
            && let LostAt::Head(partial) = at
            && partial.len() >= 5
        {
            // Enough of a valid head to tell its kind.
            self.infer_role(direction, kind_of_head(partial));
        }
        let kind = self.kind(direction);
        match (kind, at) {
            (Some(Kind::Request), LostAt::Head(partial)) => {
                self.req_resync = true;
                let PartialRequestLine {
                    method,
                    path,
                    minor,
                } = request_line(partial);
                // A request began: it takes its response's place in the
                // order, as a row when its method and target were read, or
                // else as a placeholder. Bytes refused as not HTTP began
                // nothing, unless they held a whole request line.
                if loss != Loss::Unparseable || path.is_some() {
                    let method_known = method.is_some();
                    let placeholder = path.is_none();
                    let x = HttpExchange {
                        req_method: method.unwrap_or_default(),
                        req_path: path.unwrap_or_default(),
                        major_version: 1,
                        minor_version: minor.unwrap_or(1),
                        req_start_ns: start_ns,
                        incomplete_reason: Some(IncompleteReason::LostSync),
                        ..HttpExchange::default()
                    };
                    self.enqueue(x, true, method_known, placeholder);
                }
            }
            (Some(Kind::Request), LostAt::Body) => {
                self.req_resync = true;
                if let Some(p) = self.request_entry() {
                    p.req_done = true;
                    p.x.incomplete_reason
                        .get_or_insert(IncompleteReason::LostSync);
                }
                self.req_target = ReqTarget::None;
                self.emit_ready(out);
            }
            (Some(Kind::Request), LostAt::Idle) => {
                // A request began in bytes not seen: it holds its
                // response's place (if the bytes were only blank lines, the
                // placeholder is answered by no response, and the next
                // request read finds it waiting and abandons pairing).
                self.req_resync = true;
                let x = HttpExchange {
                    major_version: 1,
                    minor_version: 1,
                    req_start_ns: time_ns,
                    incomplete_reason: Some(IncompleteReason::LostSync),
                    ..HttpExchange::default()
                };
                self.enqueue(x, true, false, true);
            }
            (Some(Kind::Response), LostAt::Head(partial)) => {
                self.resp_target = RespTarget::None;
                let status = status_line(partial);
                let is_final = status
                    .as_ref()
                    .is_some_and(|(s, _, _)| !(100..200).contains(s));
                if status.as_ref().is_some_and(|(s, _, _)| *s == 101) {
                    // Switched protocols: nothing after is HTTP.
                    self.counters.upgrades += 1;
                    self.flush(out, Some(IncompleteReason::Abandoned));
                    self.stopped = true;
                    return;
                }
                if let (true, Some((status, reason, minor))) = (is_final, status) {
                    match self.pair_response(out) {
                        Err(()) => return,
                        Ok(Pairing::Entry { .. }) => {
                            if let Some(p) = self.pending.front_mut() {
                                let head = ResponseHead {
                                    status,
                                    reason,
                                    minor,
                                    headers: None,
                                    body: BodyHeaders::default(),
                                };
                                p.start_response(head, time_ns);
                                p.resp_done = true;
                                p.x.incomplete_reason
                                    .get_or_insert(IncompleteReason::LostSync);
                            }
                            self.emit_ready(out);
                        }
                        Ok(Pairing::Nothing | Pairing::Dropped { .. }) => {}
                    }
                }
                self.resp_resync = true;
            }
            (Some(Kind::Response), LostAt::Body) => {
                if let Some(p) = self.response_entry() {
                    p.resp_done = true;
                    p.x.resp_end_ns = time_ns;
                    p.x.incomplete_reason
                        .get_or_insert(IncompleteReason::LostSync);
                }
                self.resp_target = RespTarget::None;
                self.resp_resync = true;
                self.emit_ready(out);
            }
            (Some(Kind::Response), LostAt::Idle) => self.resp_resync = true,
            // Nothing was read yet on a connection of unknown role, but the
            // lost bytes may have been either.
            (None, _) => {
                self.req_resync = true;
                self.resp_resync = true;
            }
        }
    }

    fn on_close_mid_message(&mut self, direction: Direction, in_body: bool) {
        self.counters.closed_mid_message += 1;
        match self.kind(direction) {
            Some(Kind::Request) if in_body => {
                if let Some(p) = self.request_entry() {
                    p.req_done = true;
                    p.x.incomplete_reason
                        .get_or_insert(IncompleteReason::ClosedMidMessage);
                }
                self.req_target = ReqTarget::None;
            }
            Some(Kind::Response) => {
                let entry = if in_body {
                    self.response_entry()
                } else {
                    // A response head cut short answers the oldest request
                    // still waiting (or is interim: either way that request
                    // got no complete response).
                    self.pending.front_mut().filter(|p| !p.resp_started)
                };
                if let Some(p) = entry {
                    p.resp_done = true;
                    p.x.incomplete_reason
                        .get_or_insert(IncompleteReason::ClosedMidMessage);
                }
                self.resp_target = RespTarget::None;
            }
            // A request head cut short: nothing of it is kept.
            Some(Kind::Request) | None => {}
        }
    }

    /// Gives up pairing on this connection.
    fn abandon(&mut self, out: &mut Vec<HttpExchange>) {
        self.counters.abandoned += 1;
        self.flush(out, Some(IncompleteReason::Abandoned));
        self.stopped = true;
    }

    /// Emits every entry left, oldest first: finished ones as they are,
    /// the others flagged `reason`, or by default NoResponse (no final
    /// response begun) or ClosedMidMessage.
    fn flush(&mut self, out: &mut Vec<HttpExchange>, reason: Option<IncompleteReason>) {
        while let Some(mut p) = self.pending.pop_front() {
            if !(p.req_done && p.resp_done) {
                let default = if p.resp_started {
                    IncompleteReason::ClosedMidMessage
                } else {
                    IncompleteReason::NoResponse
                };
                let reason =
                    *p.x.incomplete_reason
                        .get_or_insert(reason.unwrap_or(default));
                if reason == IncompleteReason::NoResponse {
                    self.counters.no_response += 1;
                }
            }
            self.finish(p, out);
        }
        self.req_target = ReqTarget::None;
        self.resp_target = RespTarget::None;
        self.dropped = 0;
        self.dropped_special = 0;
    }

    /// Emits the oldest entries whose request and response both ended.
    fn emit_ready(&mut self, out: &mut Vec<HttpExchange>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.req_done && p.resp_done)
        {
            if let Some(p) = self.pending.pop_front() {
                self.finish(p, out);
            }
        }
    }

    fn finish(&mut self, p: Pending, out: &mut Vec<HttpExchange>) {
        if p.placeholder {
            return;
        }
        let mut x = p.x;
        x.latency_ns = if p.resp_started {
            x.resp_end_ns.saturating_sub(x.req_start_ns)
        } else {
            x.resp_end_ns = 0;
            0
        };
        x.complete = x.incomplete_reason.is_none();
        if x.complete {
            self.counters.exchanges += 1;
        } else {
            self.counters.incomplete += 1;
        }
        out.push(x);
    }
}

/// What a final response answers.
#[derive(Clone, Copy, Debug)]
enum Pairing {
    /// The oldest queue entry; whether its method is HEAD, whether
    /// CONNECT, when known.
    Entry { method: Option<(bool, bool)> },
    /// A request that was not kept (queue full); `special` if HEAD or
    /// CONNECT may be among those.
    Dropped { special: bool },
    /// No request known (counted).
    Nothing,
}

#[cfg(test)]
mod tests;
