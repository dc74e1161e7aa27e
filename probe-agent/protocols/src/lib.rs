//! Sonde's protocol parsers: they turn the bytes traced processes moved
//! through sockets into table rows. Pure code: no I/O, no eBPF, no clock.
//!
//! - [`http`]: HTTP/1.x requests paired with their responses
//!   ([`HttpConnection`] per connection, [`HttpExchange`] rows).
//! - [`dns`]: DNS messages ([`dns::parse`]) and queries paired with their
//!   responses ([`DnsTracker`], [`DnsExchange`] rows); DNS over TCP is
//!   split into messages by [`DnsTcpFramer`].
//!
//! # Input model
//!
//! The agent feeds each connection's calls in order, per [`Direction`]
//! (what the traced process wrote, what it read), as they happened:
//!
//! - `data(direction, time_ns, call_start, bytes)`: contiguous bytes the
//!   process moved. `call_start` is true when they begin a syscall's data
//!   (read, write, sendto, recvfrom, or later SSL_read/SSL_write's
//!   plaintext); a syscall's data may arrive in several pieces, of which
//!   only the first starts the call.
//! - `gap(direction, time_ns, len)`: `len` bytes the process moved that
//!   were not copied. The kernel side copies at most a few KiB per syscall;
//!   the rest of a large read or write arrives only as its length.
//!
//! A gap inside a body whose length is known (`Content-Length`, or inside a
//! chunk whose size was read, or a body that lasts until the close) is
//! harmless: its bytes count as body bytes (only the copying of body bytes,
//! see [`HttpConfig::body_bytes`], stops there). A gap where the parser
//! needs the bytes (a head, a chunk-size line, the CRLF after a chunk,
//! trailers, or the start of a next message) loses sync for that
//! direction, and so does a head that is too long or not valid HTTP: the
//! message in progress ends with a flag, and the direction resynchronizes
//! at the next call whose data begins with a message start (an HTTP method
//! token for requests, `HTTP/1.` for responses). Resynchronization is only
//! attempted at call starts: a call is where a message usually begins,
//! while a body's bytes may hold anything.
//!
//! Exactness comes first: a wrong pairing is worse than a missing row (see
//! [`http`] for the rules that keep pairing certain after sync is lost).
//!
//! # Counters
//!
//! Every message that cannot be parsed or paired is counted by reason. The
//! counters only grow; each parser hands them out with `counters()` (read)
//! and `take_counters()` (read and reset), and `delta` gives what grew
//! since an earlier copy, so the agent adds them into its Prometheus
//! counters either way.
//!
//! [`HttpCounters`], per connection:
//!
//! - `exchanges`: complete rows; `incomplete`: rows with an
//!   [`IncompleteReason`] (so rows = exchanges + incomplete).
//! - `unparseable_heads`: heads, chunk-size lines or message starts that
//!   are not HTTP/1.x, or whose body length cannot be known (conflicting
//!   `Content-Length`, a request coded other than chunked); each costs the
//!   direction its sync.
//! - `heads_too_long`: heads (chunk-size lines, trailer sections) over
//!   [`HttpConfig::max_head_bytes`]; each costs the direction its sync.
//! - `lost_sync`: gaps over bytes the parser needed, and responses whose
//!   body length depends on a method that was not read.
//! - `responses_without_request`: final responses with no request to pair
//!   with for certain (no row).
//! - `pending_overflow`: requests not kept because
//!   [`HttpConfig::max_pending`] were waiting (no row; their responses are
//!   skipped in order).
//! - `closed_mid_message`: closes in the middle of a request or response
//!   (not a body that ends at the close).
//! - `no_response`: requests still waiting at close (rows flagged
//!   [`IncompleteReason::NoResponse`]).
//! - `upgrades`: connections that switched protocols (`101`, `CONNECT`
//!   answered `2xx`) and stopped being parsed.
//! - `abandoned`: connections on which pairing was given up because it
//!   could no longer be certain.
//!
//! [`DnsCounters`], per tracker:
//!
//! - `exchanges`: answered queries (rows); `unanswered`: queries expired
//!   without response (rows without `answered`).
//! - `unparseable`: messages that are not DNS (or a query without
//!   question, or a message whose QR bit contradicts the call).
//! - `responses_without_query`: responses no pending query matches (flow,
//!   id, question).
//! - `evicted`: pending queries dropped at [`DnsConfig::max_pending`] (no
//!   row).
//! - `duplicate_queries`: queries sent again while pending (one row).
//!
//! [`DnsTcpCounters`], per DNS-over-TCP direction: `messages` passed on,
//! `incomplete` messages cut by a gap (skipped, sync kept), `lost_sync`
//! when a gap covered a length prefix.

pub mod dns;
pub mod http;
pub mod stream;

pub use self::{
    dns::{
        DnsConfig, DnsCounters, DnsError, DnsExchange, DnsMessage, DnsQuestion, DnsTcpCounters,
        DnsTcpFramer, DnsTracker,
    },
    http::{HttpConfig, HttpConnection, HttpCounters, HttpExchange, IncompleteReason},
    stream::{Direction, Role},
};
