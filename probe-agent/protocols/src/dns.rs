//! DNS messages (RFC 1035): [`parse`] one, [`DnsTracker`] pairs queries
//! with their responses, [`DnsTcpFramer`] splits DNS over TCP into
//! messages (each behind a 2-byte length).
//!
//! The parser is this crate's own: it renders every record type, known or
//! not (unknown ones in RFC 3597's generic form), and any question type or
//! class, rather than refusing a whole message for one value it does not
//! know; compression pointers must point backwards, which bounds the work
//! on hostile input.
//!
//! Names are rendered as text with RFC 1035's escapes (`\.` for a dot in a
//! label, `\DDD` for bytes that are not printable). A question's name has
//! no trailing dot (`example.com`, the root as `.`); names inside answers
//! are fully qualified, with it (`CNAME foo.example.`), as in zone files.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    ops::AddAssign,
};

/// Why bytes are not a DNS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The bytes end before the header or a section does.
    #[error("truncated DNS message")]
    Truncated,
    /// A name with a label over 63 bytes, a total over 255, a reserved
    /// label type, or a compression pointer that does not point backwards.
    #[error("malformed name in DNS message")]
    BadName,
    /// A record whose data does not match its type's layout.
    #[error("malformed record data in DNS message")]
    BadRecord,
}

/// A question: what a query asks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuestion {
    /// The name, without trailing dot (the root is ".").
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl DnsQuestion {
    /// The type as text: "A", "AAAA", ... or "TYPE65535".
    pub fn type_name(&self) -> String {
        type_name(self.qtype)
    }
}

/// A parsed DNS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    /// QR: a response (true) or a query.
    pub is_response: bool,
    pub opcode: u8,
    /// The response code, with EDNS's extended bits when an OPT record
    /// carries them.
    pub rcode: u16,
    /// TC: the response was cut to fit (a client retries over TCP).
    pub truncated: bool,
    pub questions: Vec<DnsQuestion>,
    /// The answer section, one record per entry as "TYPE data" text, such
    /// as "A 127.0.0.1" or "CNAME foo.example.".
    pub answers: Vec<String>,
}

impl DnsMessage {
    /// The response code as text: "NOERROR", "NXDOMAIN", ... or "RCODE23".
    pub fn rcode_name(&self) -> String {
        rcode_name(self.rcode)
    }
}

/// The mnemonic of a record type, or "TYPE" and its number.
pub fn type_name(qtype: u16) -> String {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        39 => "DNAME",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        50 => "NSEC3",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{qtype}"),
    };
    name.to_owned()
}

/// The mnemonic of a response code, or "RCODE" and its number.
pub fn rcode_name(rcode: u16) -> String {
    let name = match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        23 => "BADCOOKIE",
        _ => return format!("RCODE{rcode}"),
    };
    name.to_owned()
}

const TYPE_OPT: u16 = 41;
const MAX_NAME_LEN: usize = 255;
/// More pointers than a 255-byte name has labels is a loop, whatever their
/// direction.
const MAX_POINTERS: usize = 128;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(DnsError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a name at the current position into `out` (fully qualified,
    /// with a trailing dot) and moves past it.
    fn name(&mut self, out: &mut String) -> Result<(), DnsError> {
        self.pos = read_name(self.buf, self.pos, out)?;
        Ok(())
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Reads the name at `pos` of the message `buf` into `out`; returns where
/// the name ends in the message (after its first pointer, if any).
fn read_name(buf: &[u8], mut pos: usize, out: &mut String) -> Result<usize, DnsError> {
    let mut end = None;
    let mut len = 0usize;
    let mut pointers = 0usize;
    let start_len = out.len();
    loop {
        let b = *buf.get(pos).ok_or(DnsError::Truncated)?;
        match b & 0xC0 {
            0x00 if b == 0 => {
                if out.len() == start_len {
                    out.push('.');
                }
                return Ok(end.unwrap_or(pos + 1));
            }
            0x00 => {
                let n = usize::from(b);
                let label = buf.get(pos + 1..pos + 1 + n).ok_or(DnsError::Truncated)?;
                len += n + 1;
                if len > MAX_NAME_LEN {
                    return Err(DnsError::BadName);
                }
                push_label(out, label);
                out.push('.');
                pos += n + 1;
            }
            0xC0 => {
                let low = *buf.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = usize::from(b & 0x3F) << 8 | usize::from(low);
                pointers += 1;
                if target >= pos || pointers > MAX_POINTERS {
                    return Err(DnsError::BadName);
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            // 0x40 and 0x80: extended and reserved label types.
            _ => return Err(DnsError::BadName),
        }
    }
}

/// A label's bytes as zone-file text.
fn push_label(out: &mut String, label: &[u8]) {
    for &c in label {
        match c {
            b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                out.push('\\');
                out.push(char::from(c));
            }
            0x21..=0x7e => out.push(char::from(c)),
            _ => {
                let _ = write!(out, "\\{c:03}");
            }
        }
    }
}

/// A character-string's bytes, quoted.
fn push_quoted(out: &mut String, s: &[u8]) {
    out.push('"');
    for &c in s {
        match c {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(c));
            }
            0x20..=0x7e => out.push(char::from(c)),
            _ => {
                let _ = write!(out, "\\{c:03}");
            }
        }
    }
    out.push('"');
}

/// Parses one DNS message (as carried by UDP; for TCP, without its length
/// prefix). Bytes after the last section are ignored.
pub fn parse(bytes: &[u8]) -> Result<DnsMessage, DnsError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    // Every question takes at least 5 bytes and every record 11: counts
    // beyond what the bytes can hold are refused before allocating.
    let fits = |count: u16, min: usize, r: &Reader<'_>| usize::from(count) * min <= r.remaining();
    if !fits(counts[0], 5, &r) {
        return Err(DnsError::Truncated);
    }
    let mut questions = Vec::with_capacity(usize::from(counts[0]));
    for _ in 0..counts[0] {
        let mut name = String::new();
        r.name(&mut name)?;
        if name.len() > 1 {
            name.pop();
        }
        let qtype = r.u16()?;
        let qclass = r.u16()?;
        questions.push(DnsQuestion {
            name,
            qtype,
            qclass,
        });
    }
    if !fits(counts[1], 11, &r) {
        return Err(DnsError::Truncated);
    }
    let mut answers = Vec::with_capacity(usize::from(counts[1]));
    for _ in 0..counts[1] {
        let (rtype, rdata_at, rdata_len, _) = record(&mut r)?;
        let mut text = String::new();
        render_rdata(bytes, rtype, rdata_at, rdata_len, &mut text)?;
        answers.push(text);
    }
    // Authority and additional sections: only read for an OPT record, but
    // they must be well formed too.
    let mut extended_rcode = 0u16;
    for _ in 0..u32::from(counts[2]) + u32::from(counts[3]) {
        let (rtype, _, _, ttl) = record(&mut r)?;
        if rtype == TYPE_OPT {
            extended_rcode = (ttl >> 24) as u16;
        }
    }
    Ok(DnsMessage {
        id,
        is_response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xF) as u8,
        rcode: extended_rcode << 4 | (flags & 0xF),
        truncated: flags & 0x0200 != 0,
        questions,
        answers,
    })
}

/// Reads a record's header and skips its data: (type, data offset, data
/// length, TTL).
fn record(r: &mut Reader<'_>) -> Result<(u16, usize, usize, u32), DnsError> {
    let mut scratch = String::new();
    r.name(&mut scratch)?;
    let rtype = r.u16()?;
    let _class = r.u16()?;
    let ttl = r.u32()?;
    let len = usize::from(r.u16()?);
    let at = r.pos;
    r.take(len)?;
    Ok((rtype, at, len, ttl))
}

/// Renders a record's data as "TYPE data".
fn render_rdata(
    msg: &[u8],
    rtype: u16,
    at: usize,
    len: usize,
    out: &mut String,
) -> Result<(), DnsError> {
    let data = &msg[at..at + len];
    let end = at + len;
    // Names inside record data may be compressed against the whole message
    // but must end inside the data.
    let name_at = |pos: usize, out: &mut String| -> Result<usize, DnsError> {
        let next = read_name(&msg[..end], pos, out)?;
        if next > end {
            return Err(DnsError::BadRecord);
        }
        Ok(next)
    };
    out.push_str(&type_name(rtype));
    out.push(' ');
    let u16_at = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    match rtype {
        1 if len == 4 => {
            let _ = write!(out, "{}", Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        28 if len == 16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(data);
            let _ = write!(out, "{}", Ipv6Addr::from(octets));
        }
        // NS, CNAME, PTR, DNAME: one name.
        2 | 5 | 12 | 39 => {
            if name_at(at, out)? != end {
                return Err(DnsError::BadRecord);
            }
        }
        15 if len >= 3 => {
            let _ = write!(out, "{} ", u16_at(0));
            if name_at(at + 2, out)? != end {
                return Err(DnsError::BadRecord);
            }
        }
        33 if len >= 7 => {
            let _ = write!(out, "{} {} {} ", u16_at(0), u16_at(2), u16_at(4));
            if name_at(at + 6, out)? != end {
                return Err(DnsError::BadRecord);
            }
        }
        6 => {
            let mut next = name_at(at, out)?;
            out.push(' ');
            next = name_at(next, out)?;
            if end.checked_sub(next) != Some(20) {
                return Err(DnsError::BadRecord);
            }
            let i = next - at;
            let _ = write!(
                out,
                " {} {} {} {} {}",
                u32_at(i),
                u32_at(i + 4),
                u32_at(i + 8),
                u32_at(i + 12),
                u32_at(i + 16)
            );
        }
        16 => {
            let mut i = 0;
            while i < len {
                let n = usize::from(data[i]);
                let s = data.get(i + 1..i + 1 + n).ok_or(DnsError::BadRecord)?;
                if i > 0 {
                    out.push(' ');
                }
                push_quoted(out, s);
                i += 1 + n;
            }
        }
        1 | 28 | 15 | 33 => return Err(DnsError::BadRecord),
        _ => {
            // RFC 3597's generic form.
            let _ = write!(out, "\\# {len}");
            if len > 0 {
                out.push(' ');
                for b in data {
                    let _ = write!(out, "{b:02x}");
                }
            }
        }
    }
    Ok(())
}

/// What a [`DnsTracker`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Queries waiting for their response at once, over all flows; beyond
    /// it the oldest is evicted. Default 4096.
    pub max_pending: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { max_pending: 4096 }
    }
}

/// A query and its response: one row of the DNS table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsExchange {
    pub id: u16,
    /// The first question's name, without trailing dot.
    pub query_name: String,
    /// The first question's type as text ("A", "AAAA", "TYPE65535").
    pub query_type: String,
    /// Whether a response came; false for a row of
    /// [`DnsTracker::expire`].
    pub answered: bool,
    /// The response code as text ("NOERROR", "NXDOMAIN"); empty without a
    /// response.
    pub rcode: String,
    /// The answer records, one "TYPE data" text each.
    pub answers: Vec<String>,
    /// TC: the response was cut to fit.
    pub truncated: bool,
    /// Time of the query (its first sending, if it was sent again).
    pub req_time_ns: u64,
    /// Time of the response; 0 without one.
    pub resp_time_ns: u64,
    /// `resp_time_ns - req_time_ns` (saturating); 0 without a response.
    pub latency_ns: u64,
}

/// What happened to DNS messages, by reason. Fields only grow; read and
/// reset with [`DnsTracker::take_counters`], or take
/// [`DnsCounters::delta`]s of copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Queries paired with their response (rows with `answered`).
    pub exchanges: u64,
    /// Queries that waited longer than the timeout given to
    /// [`DnsTracker::expire`] (rows without `answered`).
    pub unanswered: u64,
    /// Messages that are not valid DNS ([`parse`] failed), or whose QR bit
    /// contradicts the call ([`DnsTracker::query`] given a response or the
    /// reverse).
    pub unparseable: u64,
    /// Responses with no pending query of the same flow, id and question.
    pub responses_without_query: u64,
    /// Pending queries dropped because [`DnsConfig::max_pending`] were
    /// waiting; no row.
    pub evicted: u64,
    /// Queries sent again (same flow, id and question) while the first was
    /// pending: one row, timed from the first.
    pub duplicate_queries: u64,
}

impl DnsCounters {
    /// What grew since `earlier` (a copy taken before).
    pub fn delta(&self, earlier: &DnsCounters) -> DnsCounters {
        DnsCounters {
            exchanges: self.exchanges.saturating_sub(earlier.exchanges),
            unanswered: self.unanswered.saturating_sub(earlier.unanswered),
            unparseable: self.unparseable.saturating_sub(earlier.unparseable),
            responses_without_query: self
                .responses_without_query
                .saturating_sub(earlier.responses_without_query),
            evicted: self.evicted.saturating_sub(earlier.evicted),
            duplicate_queries: self
                .duplicate_queries
                .saturating_sub(earlier.duplicate_queries),
        }
    }
}

impl AddAssign<&DnsCounters> for DnsCounters {
    fn add_assign(&mut self, other: &DnsCounters) {
        self.exchanges += other.exchanges;
        self.unanswered += other.unanswered;
        self.unparseable += other.unparseable;
        self.responses_without_query += other.responses_without_query;
        self.evicted += other.evicted;
        self.duplicate_queries += other.duplicate_queries;
    }
}

impl AddAssign for DnsCounters {
    fn add_assign(&mut self, other: DnsCounters) {
        *self += &other;
    }
}

/// What pairs a response with its query: the caller's flow key (say, the
/// socket and the peer), the message id and the first question (name
/// compared without regard to ASCII case, type, class).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PairKey<K> {
    flow: K,
    id: u16,
    name: String,
    qtype: u16,
    qclass: u16,
}

#[derive(Debug)]
struct PendingQuery {
    time_ns: u64,
    seq: u64,
    name: String,
    qtype: u16,
}

/// Pairs DNS queries with their responses, over any number of flows.
#[derive(Debug)]
pub struct DnsTracker<K> {
    config: DnsConfig,
    pending: HashMap<PairKey<K>, PendingQuery>,
    /// Pending keys, oldest first, with the sequence number they were
    /// queued under (entries paired since are skipped when met).
    order: VecDeque<(u64, PairKey<K>)>,
    next_seq: u64,
    counters: DnsCounters,
}

impl<K: Clone + Eq + Hash> DnsTracker<K> {
    pub fn new(config: &DnsConfig) -> Self {
        DnsTracker {
            config: *config,
            pending: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            counters: DnsCounters::default(),
        }
    }

    /// A message of the flow `flow`: a query or a response, by its QR bit.
    /// Returns the row a response completes.
    pub fn message(&mut self, flow: K, time_ns: u64, bytes: &[u8]) -> Option<DnsExchange> {
        match parse(bytes) {
            Ok(msg) if msg.is_response => self.on_response(flow, time_ns, msg),
            Ok(msg) => {
                self.on_query(flow, time_ns, msg);
                None
            }
            Err(_) => {
                self.counters.unparseable += 1;
                None
            }
        }
    }

    /// A query the flow sent (or received, for a traced server).
    pub fn query(&mut self, flow: K, time_ns: u64, bytes: &[u8]) {
        match parse(bytes) {
            Ok(msg) if !msg.is_response => self.on_query(flow, time_ns, msg),
            Ok(_) | Err(_) => self.counters.unparseable += 1,
        }
    }

    /// A response the flow received (or sent); returns its row when it
    /// answers a pending query.
    pub fn response(&mut self, flow: K, time_ns: u64, bytes: &[u8]) -> Option<DnsExchange> {
        match parse(bytes) {
            Ok(msg) if msg.is_response => self.on_response(flow, time_ns, msg),
            Ok(_) | Err(_) => {
                self.counters.unparseable += 1;
                None
            }
        }
    }

    fn on_query(&mut self, flow: K, time_ns: u64, msg: DnsMessage) {
        let Some(q) = msg.questions.first() else {
            // Nothing to pair a response with.
            self.counters.unparseable += 1;
            return;
        };
        let key = PairKey {
            flow,
            id: msg.id,
            name: q.name.to_ascii_lowercase(),
            qtype: q.qtype,
            qclass: q.qclass,
        };
        if self.pending.contains_key(&key) {
            self.counters.duplicate_queries += 1;
            return;
        }
        while self.pending.len() >= self.config.max_pending.max(1) {
            if !self.evict_oldest() {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.pending.insert(
            key,
            PendingQuery {
                time_ns,
                seq,
                name: q.name.clone(),
                qtype: q.qtype,
            },
        );
        self.compact();
    }

    fn on_response(&mut self, flow: K, time_ns: u64, msg: DnsMessage) -> Option<DnsExchange> {
        let found = match msg.questions.first() {
            Some(q) => {
                let key = PairKey {
                    flow,
                    id: msg.id,
                    name: q.name.to_ascii_lowercase(),
                    qtype: q.qtype,
                    qclass: q.qclass,
                };
                self.pending.remove(&key)
            }
            // Some errors (FORMERR) come without the question: pair by id
            // alone, when only one query of the flow has it.
            None => {
                let mut matching = self
                    .pending
                    .keys()
                    .filter(|k| k.flow == flow && k.id == msg.id);
                match (matching.next().cloned(), matching.next()) {
                    (Some(key), None) => self.pending.remove(&key),
                    _ => None,
                }
            }
        };
        let Some(query) = found else {
            self.counters.responses_without_query += 1;
            return None;
        };
        self.counters.exchanges += 1;
        Some(DnsExchange {
            id: msg.id,
            query_name: query.name,
            query_type: type_name(query.qtype),
            answered: true,
            rcode: rcode_name(msg.rcode),
            answers: msg.answers,
            truncated: msg.truncated,
            req_time_ns: query.time_ns,
            resp_time_ns: time_ns,
            latency_ns: time_ns.saturating_sub(query.time_ns),
        })
    }

    /// Emits, unanswered and with their flow, the queries sent before
    /// `now_ns - timeout_ns` (oldest first, as queued), and forgets them: a
    /// response coming later counts as a response without a query.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<(K, DnsExchange)>) {
        let cutoff = now_ns.saturating_sub(timeout_ns);
        while let Some((seq, key)) = self.order.front() {
            match self.pending.get(key) {
                Some(q) if q.seq == *seq => {
                    if q.time_ns >= cutoff {
                        break;
                    }
                    let id = key.id;
                    if let Some((_, key)) = self.order.pop_front()
                        && let Some(q) = self.pending.remove(&key)
                    {
                        self.counters.unanswered += 1;
                        out.push((
                            key.flow,
                            DnsExchange {
                                id,
                                query_name: q.name,
                                query_type: type_name(q.qtype),
                                req_time_ns: q.time_ns,
                                ..DnsExchange::default()
                            },
                        ));
                    }
                }
                // Paired (or queued again) since.
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Queries waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn counters(&self) -> &DnsCounters {
        &self.counters
    }

    /// The counters, reset to zero.
    pub fn take_counters(&mut self) -> DnsCounters {
        std::mem::take(&mut self.counters)
    }

    /// Drops the oldest pending query; false if none is left.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.pending.get(&key).is_some_and(|q| q.seq == seq) {
                self.pending.remove(&key);
                self.counters.evicted += 1;
                return true;
            }
        }
        false
    }

    /// Drops the order's entries of queries paired since, once they
    /// outnumber the live ones, so it stays bounded.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order
                .retain(|(seq, key)| pending.get(key).is_some_and(|q| q.seq == *seq));
        }
    }
}

/// Counts of a [`DnsTcpFramer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsTcpCounters {
    /// Whole messages passed on.
    pub messages: u64,
    /// Messages a gap cut (their length was known, so what follows is
    /// still in sync); not passed on.
    pub incomplete: u64,
    /// Gaps over a length prefix (or a length of 0): the direction waits
    /// for the next call, which is taken to start a message.
    pub lost_sync: u64,
}

/// Splits one direction of a DNS-over-TCP connection into messages, each
/// of which is behind a 2-byte big-endian length (RFC 1035 4.2.2). Holds at
/// most one message (64 KiB).
#[derive(Debug, Default)]
pub struct DnsTcpFramer {
    /// The length prefix and message bytes read so far.
    buf: Vec<u8>,
    /// Bytes left of a message a gap cut, to skip.
    skip: u64,
    desync: bool,
    counters: DnsTcpCounters,
}

impl DnsTcpFramer {
    pub fn new() -> Self {
        DnsTcpFramer::default()
    }

    /// Contiguous bytes; `on_message` gets each whole message (without its
    /// length prefix). `call_start` as for HTTP: a direction out of sync
    /// resyncs at a call start.
    pub fn data(&mut self, call_start: bool, bytes: &[u8], mut on_message: impl FnMut(&[u8])) {
        if self.desync {
            if !call_start {
                return;
            }
            self.desync = false;
            self.buf.clear();
            self.skip = 0;
        }
        let mut rest = bytes;
        let skip = usize::try_from(self.skip).map_or(rest.len(), |s| s.min(rest.len()));
        self.skip -= skip as u64;
        rest = &rest[skip..];
        while !rest.is_empty() {
            if self.buf.len() < 2 {
                let take = (2 - self.buf.len()).min(rest.len());
                self.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.buf.len() == 2 && self.message_len() == 0 {
                    self.counters.lost_sync += 1;
                    self.desync = true;
                    return;
                }
                continue;
            }
            let need = self.message_len() + 2 - self.buf.len();
            if self.buf.len() == 2 && rest.len() >= need {
                // The whole message is here: no copy.
                self.counters.messages += 1;
                on_message(&rest[..need]);
                self.buf.clear();
                rest = &rest[need..];
                continue;
            }
            let take = need.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if take == need {
                self.counters.messages += 1;
                on_message(&self.buf[2..]);
                self.buf.clear();
            }
        }
    }

    /// `len` bytes that were not copied.
    pub fn gap(&mut self, len: u64) {
        if self.desync || len == 0 {
            return;
        }
        let mut len = len;
        let skipped = self.skip.min(len);
        self.skip -= skipped;
        len -= skipped;
        if len == 0 {
            return;
        }
        if self.buf.len() < 2 {
            self.counters.lost_sync += 1;
            self.desync = true;
            self.buf.clear();
            return;
        }
        let need = (self.message_len() + 2 - self.buf.len()) as u64;
        self.counters.incomplete += 1;
        self.buf.clear();
        if len < need {
            self.skip = need - len;
        } else if len > need {
            // The gap runs into the next message's length.
            self.counters.lost_sync += 1;
            self.desync = true;
        }
    }

    pub fn counters(&self) -> &DnsTcpCounters {
        &self.counters
    }

    /// The counters, reset to zero.
    pub fn take_counters(&mut self) -> DnsTcpCounters {
        std::mem::take(&mut self.counters)
    }

    fn message_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]))
    }
}

#[cfg(test)]
mod tests;
