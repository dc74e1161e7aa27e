//! Message framing of one direction of an HTTP/1.x connection: where heads
//! end, how long bodies are, chunked encoding, gaps and resynchronization.
//! It knows nothing of pairing; the connection tells it each message's body
//! framing once it has read the head.

use super::head::{Kind, looks_like_start, partial_head_ok};

/// Heads no longer than this are checked for validity as their bytes
/// arrive, so bytes that are not HTTP are refused early; longer ones are
/// checked once complete (which bounds the work for heads that arrive a
/// byte per call).
const EARLY_CHECK_BYTES: usize = 512;

/// Why a direction lost sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// A gap covered bytes the parser needed (a head, a chunk-size line, a
    /// chunk's CRLF, trailers, or the start of a message).
    Gap,
    /// A head (or chunk-size line, or trailer section) longer than allowed.
    TooLong,
    /// Bytes that are not valid HTTP where a head or chunk line was expected.
    Unparseable,
}

/// Where in a message a direction lost sync.
#[derive(Debug)]
pub(super) enum LostAt<'a> {
    /// Between messages: a message began in bytes that were not seen.
    Idle,
    /// In the head of a message; the head's bytes seen so far (complete when
    /// the head was refused after it ended).
    Head(&'a [u8]),
    /// In the body of a message whose head was read.
    Body,
}

/// How the body of a message whose head was just read is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: the message ended with its head.
    NoBody,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// What the framer found in the input; each is handled by the connection
/// before the framer goes on.
#[derive(Debug)]
pub(super) enum Step<'a> {
    /// The input is consumed.
    Done,
    /// The direction was out of sync and a call starts with a message start.
    Resync,
    /// A complete head; the connection answers with [`Framer::set_framing`]
    /// or [`Framer::desync`].
    Head { head: &'a [u8], start_ns: u64 },
    /// Body bytes (decoded, for chunked bodies).
    Body(&'a [u8]),
    /// Body bytes that were not copied.
    BodyGap(u64),
    /// The message ended.
    End,
    /// Sync lost; the framer now waits for a call that starts a message.
    Lost {
        loss: Loss,
        at: LostAt<'a>,
        start_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Reading a head.
    Head,
    /// A head was returned; waiting for the connection's framing.
    Framing,
    /// Body bytes left of a `Content-Length` body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(ChunkLine),
    /// Data bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data; true once the CR was seen.
    ChunkEnd(bool),
    /// The trailer section after the last chunk.
    Trailers,
    /// A body that lasts until the connection closes.
    UntilClose,
    /// Out of sync: waiting for a call that starts with a message start.
    Desync,
    /// No longer parsed.
    Stopped,
}

/// An incremental chunk-size line: `1a;name=value\r\n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChunkLine {
    size: u64,
    digits: u8,
    in_extension: bool,
    saw_cr: bool,
    len: usize,
}

enum LineStep {
    More,
    Done(u64),
    Bad(Loss),
}

impl ChunkLine {
    /// Feeds bytes; returns how many were used and what came of them.
    fn feed(&mut self, bytes: &[u8], max_len: usize) -> (usize, LineStep) {
        for (i, &b) in bytes.iter().enumerate() {
            self.len += 1;
            if self.len > max_len {
                return (i + 1, LineStep::Bad(Loss::TooLong));
            }
            if self.saw_cr {
                return if b == b'\n' {
                    (i + 1, LineStep::Done(self.size))
                } else {
                    (i + 1, LineStep::Bad(Loss::Unparseable))
                };
            }
            match b {
                b'\n' | b'\r' if self.digits == 0 => {
                    return (i + 1, LineStep::Bad(Loss::Unparseable));
                }
                b'\n' => return (i + 1, LineStep::Done(self.size)),
                b'\r' => self.saw_cr = true,
                _ if self.in_extension => {
                    if b != b'\t' && (b < 0x20 || b == 0x7f) {
                        return (i + 1, LineStep::Bad(Loss::Unparseable));
                    }
                }
                b';' | b' ' | b'\t' if self.digits > 0 => self.in_extension = true,
                _ => {
                    let Some(value) = (b as char).to_digit(16) else {
                        return (i + 1, LineStep::Bad(Loss::Unparseable));
                    };
                    if self.digits >= 16 {
                        return (i + 1, LineStep::Bad(Loss::Unparseable));
                    }
                    self.size = (self.size << 4) | u64::from(value);
                    self.digits += 1;
                }
            }
        }
        (bytes.len(), LineStep::More)
    }
}

/// Finds the end of a head (or trailer section): an empty line, ended by
/// LF or CRLF. `scan` carries the state across calls: 0 in a line, 1 just
/// after an LF, 2 after an LF and a CR. Returns how many bytes end it.
fn scan_head_end(scan: &mut u8, bytes: &[u8]) -> Option<usize> {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' if *scan >= 1 => {
                *scan = 0;
                return Some(i + 1);
            }
            b'\n' => *scan = 1,
            b'\r' if *scan == 1 => *scan = 2,
            _ => *scan = 0,
        }
    }
    None
}

/// One direction's framing state.
#[derive(Debug)]
pub(super) struct Framer {
    state: State,
    /// The head being read, when it spans calls (reused).
    head: Vec<u8>,
    scan: u8,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
    /// Time of the call with the message's first byte.
    start_ns: u64,
}

impl Framer {
    pub(super) fn new() -> Self {
        Framer {
            state: State::Idle,
            head: Vec::new(),
            scan: 0,
            trailer_len: 0,
            start_ns: 0,
        }
    }

    /// The body framing of the message whose head was just returned.
    pub(super) fn set_framing(&mut self, framing: Framing) {
        self.state = match framing {
            Framing::NoBody | Framing::Length(0) => State::Idle,
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::ChunkSize(ChunkLine::default()),
            Framing::UntilClose => State::UntilClose,
        };
    }

    /// Out of sync until a call starts with a message start.
    pub(super) fn desync(&mut self) {
        if self.state != State::Stopped {
            self.state = State::Desync;
        }
        self.head.clear();
    }

    /// No longer parsed.
    pub(super) fn stop(&mut self) {
        self.state = State::Stopped;
        self.head = Vec::new();
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Where the current message is, for a close: `None` between messages,
    /// `Some(false)` in a head, `Some(true)` in a body (an until-close body
    /// counts as ended by the close and reports `None` through
    /// [`Framer::until_close`]).
    pub(super) fn in_message(&self) -> Option<bool> {
        match self.state {
            State::Idle | State::Desync | State::Stopped | State::UntilClose => None,
            State::Head => Some(false),
            State::Framing
            | State::Body(_)
            | State::ChunkSize(_)
            | State::ChunkData(_)
            | State::ChunkEnd(_)
            | State::Trailers => Some(true),
        }
    }

    pub(super) fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// The next step over `input` from `*pos`. `call_start` is whether
    /// `input` begins a syscall's data; `kind` is what this direction
    /// carries, when known.
    pub(super) fn next<'a>(
        &'a mut self,
        kind: Option<Kind>,
        input: &'a [u8],
        pos: &mut usize,
        call_start: bool,
        time_ns: u64,
        max_head: usize,
    ) -> Step<'a> {
        loop {
            // States that end without input.
            match self.state {
                State::Body(0) => {
                    self.state = State::Idle;
                    return Step::End;
                }
                State::ChunkData(0) => self.state = State::ChunkEnd(false),
                _ => {}
            }
            let rest = &input[*pos..];
            if rest.is_empty() {
                return Step::Done;
            }
            match &mut self.state {
                State::Stopped => {
                    *pos = input.len();
                    return Step::Done;
                }
                State::Desync => {
                    if call_start && *pos == 0 && looks_like_start(kind, rest) {
                        self.state = State::Idle;
                        return Step::Resync;
                    }
                    *pos = input.len();
                    return Step::Done;
                }
                State::Idle => {
                    let blank = rest
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    *pos += blank;
                    if *pos < input.len() {
                        self.state = State::Head;
                        self.head.clear();
                        // Reused, but a rare long head does not stay held.
                        self.head.shrink_to(4096);
                        self.scan = 0;
                        self.start_ns = time_ns;
                    }
                }
                State::Head => {
                    let found = scan_head_end(&mut self.scan, rest);
                    let n = found.unwrap_or(rest.len());
                    if self.head.len() + n > max_head {
                        let start_ns = self.start_ns;
                        self.state = State::Desync;
                        *pos = input.len();
                        let seen = if self.head.is_empty() {
                            &rest[..max_head.min(rest.len())]
                        } else {
                            &self.head[..]
                        };
                        return Step::Lost {
                            loss: Loss::TooLong,
                            at: LostAt::Head(seen),
                            start_ns,
                        };
                    }
                    *pos += n;
                    if found.is_some() {
                        self.state = State::Framing;
                        let head = if self.head.is_empty() {
                            &rest[..n]
                        } else {
                            self.head.extend_from_slice(&rest[..n]);
                            &self.head[..]
                        };
                        return Step::Head {
                            head,
                            start_ns: self.start_ns,
                        };
                    }
                    self.head.extend_from_slice(rest);
                    if self.head.len() <= EARLY_CHECK_BYTES && !partial_head_ok(kind, &self.head) {
                        self.state = State::Desync;
                        return Step::Lost {
                            loss: Loss::Unparseable,
                            at: LostAt::Head(&self.head),
                            start_ns: self.start_ns,
                        };
                    }
                    return Step::Done;
                }
                State::Framing => {
                    // The connection always answers a head before going on.
                    self.state = State::Desync;
                    return Step::Lost {
                        loss: Loss::Unparseable,
                        at: LostAt::Body,
                        start_ns: self.start_ns,
                    };
                }
                State::Body(left) | State::ChunkData(left) => {
                    let take = usize::try_from(*left).map_or(rest.len(), |l| l.min(rest.len()));
                    *left -= take as u64;
                    *pos += take;
                    return Step::Body(&rest[..take]);
                }
                State::UntilClose => {
                    *pos = input.len();
                    return Step::Body(rest);
                }
                State::ChunkSize(line) => {
                    let (used, step) = line.feed(rest, max_head);
                    *pos += used;
                    match step {
                        LineStep::More => return Step::Done,
                        LineStep::Done(0) => {
                            self.state = State::Trailers;
                            self.scan = 1;
                            self.trailer_len = 0;
                        }
                        LineStep::Done(size) => self.state = State::ChunkData(size),
                        LineStep::Bad(loss) => return self.lose_in_body(loss, input, pos),
                    }
                }
                State::ChunkEnd(saw_cr) => {
                    let b = rest[0];
                    *pos += 1;
                    match b {
                        b'\r' if !*saw_cr => *saw_cr = true,
                        b'\n' => self.state = State::ChunkSize(ChunkLine::default()),
                        _ => return self.lose_in_body(Loss::Unparseable, input, pos),
                    }
                }
                State::Trailers => {
                    let found = scan_head_end(&mut self.scan, rest);
                    let n = found.unwrap_or(rest.len());
                    self.trailer_len += n;
                    *pos += n;
                    if self.trailer_len > max_head {
                        return self.lose_in_body(Loss::TooLong, input, pos);
                    }
                    if found.is_some() {
                        self.state = State::Idle;
                        return Step::End;
                    }
                    return Step::Done;
                }
            }
        }
    }

    fn lose_in_body<'a>(&mut self, loss: Loss, input: &[u8], pos: &mut usize) -> Step<'a> {
        self.state = State::Desync;
        *pos = input.len();
        Step::Lost {
            loss,
            at: LostAt::Body,
            start_ns: self.start_ns,
        }
    }

    /// The next step over a gap of `*left` bytes that were not copied.
    pub(super) fn next_gap(&mut self, left: &mut u64) -> Step<'_> {
        match self.state {
            State::Body(0) => {
                self.state = State::Idle;
                return Step::End;
            }
            State::ChunkData(0) => self.state = State::ChunkEnd(false),
            _ => {}
        }
        if *left == 0 {
            return Step::Done;
        }
        match &mut self.state {
            State::Stopped | State::Desync => {
                *left = 0;
                Step::Done
            }
            State::Body(rest) | State::ChunkData(rest) => {
                let take = (*rest).min(*left);
                *rest -= take;
                *left -= take;
                Step::BodyGap(take)
            }
            State::UntilClose => Step::BodyGap(std::mem::take(left)),
            State::Idle => {
                *left = 0;
                self.state = State::Desync;
                Step::Lost {
                    loss: Loss::Gap,
                    at: LostAt::Idle,
                    start_ns: self.start_ns,
                }
            }
            State::Head => {
                *left = 0;
                self.state = State::Desync;
                Step::Lost {
                    loss: Loss::Gap,
                    at: LostAt::Head(&self.head),
                    start_ns: self.start_ns,
                }
            }
            State::Framing | State::ChunkSize(_) | State::ChunkEnd(_) | State::Trailers => {
                *left = 0;
                self.state = State::Desync;
                Step::Lost {
                    loss: Loss::Gap,
                    at: LostAt::Body,
                    start_ns: self.start_ns,
                }
            }
        }
    }
}
