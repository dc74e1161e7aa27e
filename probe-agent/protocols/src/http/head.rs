//! HTTP/1.x heads: parsing them with `httparse`, the body framing their
//! headers declare, and recognizing the start of a message.

use httparse::{EMPTY_HEADER, Header, ParserConfig, Request, Response};

/// What a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
}

/// Method tokens a request must begin with for a direction to resynchronize
/// on it (any token is accepted while in sync).
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
];

/// Headers parsed on the stack; a head with more is parsed again with room
/// for as many as its length can hold.
const STACK_HEADERS: usize = 64;

fn response_config() -> ParserConfig {
    let mut config = ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    config
}

/// A request head.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) minor: u8,
    pub(super) headers: Option<String>,
    pub(super) body: BodyHeaders,
}

/// A response head.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) minor: u8,
    pub(super) headers: Option<String>,
    pub(super) body: BodyHeaders,
}

/// What a head's headers say of its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BodyHeaders {
    /// `Content-Length`, when present (all its values agree).
    pub(super) content_length: Option<u64>,
    /// `Transfer-Encoding`, when present: whether its last coding is chunked.
    pub(super) chunked: Option<bool>,
}

/// A head that could not be used.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Not valid HTTP/1.x.
    Invalid,
    /// Valid syntax, but its body framing cannot be known (conflicting or
    /// malformed `Content-Length`, a request whose transfer coding is not
    /// chunked).
    Framing,
}

/// Whether `bytes` can begin a message of `kind` (either, when not known):
/// a known method token and a space, or `HTTP/1.`, followed by nothing
/// `httparse` refuses.
pub(super) fn looks_like_start(kind: Option<Kind>, bytes: &[u8]) -> bool {
    let request = || {
        METHODS
            .iter()
            .any(|m| bytes.len() > m.len() && bytes.starts_with(m) && bytes[m.len()] == b' ')
            && partial_head_ok(Some(Kind::Request), bytes)
    };
    let response = || bytes.starts_with(b"HTTP/1.") && partial_head_ok(Some(Kind::Response), bytes);
    match kind {
        Some(Kind::Request) => request(),
        Some(Kind::Response) => response(),
        None => request() || response(),
    }
}

/// Whether `bytes` (the start of a head, maybe all of it) is valid so far.
pub(super) fn partial_head_ok(kind: Option<Kind>, bytes: &[u8]) -> bool {
    let mut headers = [EMPTY_HEADER; 16];
    let ok =
        |r: httparse::Result<usize>| !matches!(r, Err(e) if e != httparse::Error::TooManyHeaders);
    match kind {
        Some(Kind::Request) => ok(Request::new(&mut headers).parse(bytes)),
        Some(Kind::Response) => {
            ok(response_config().parse_response(&mut Response::new(&mut headers), bytes))
        }
        None => {
            let prefix = &bytes[..bytes.len().min(5)];
            if b"HTTP/".starts_with(prefix) && prefix.len() < 5 {
                // Too short to tell `HTTP/` from a method such as `HEAD`.
                true
            } else {
                partial_head_ok(Some(kind_of_head(bytes)), bytes)
            }
        }
    }
}

/// The kind of a head whose direction is not known yet.
pub(super) fn kind_of_head(head: &[u8]) -> Kind {
    if head.starts_with(b"HTTP/") {
        Kind::Response
    } else {
        Kind::Request
    }
}

/// Parses a complete request head.
pub(super) fn parse_request(buf: &[u8], keep_headers: bool) -> Result<RequestHead, HeadError> {
    let mut stack = [EMPTY_HEADER; STACK_HEADERS];
    match parse_request_with(buf, keep_headers, &mut stack) {
        Err(HeadError::Invalid) if too_many_headers_request(buf) => {
            let mut heap = vec![EMPTY_HEADER; buf.len() / 3 + 1];
            parse_request_with(buf, keep_headers, &mut heap)
        }
        result => result,
    }
}

fn too_many_headers_request(buf: &[u8]) -> bool {
    let mut headers = [EMPTY_HEADER; STACK_HEADERS];
    Request::new(&mut headers).parse(buf) == Err(httparse::Error::TooManyHeaders)
}

fn parse_request_with<'b>(
    buf: &'b [u8],
    keep_headers: bool,
    headers: &mut [Header<'b>],
) -> Result<RequestHead, HeadError> {
    let mut req = Request::new(headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        _ => return Err(HeadError::Invalid),
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Invalid);
    };
    let body = body_headers(req.headers)?;
    // A request's body is chunked or has a length (RFC 9112 6.3).
    if body.chunked == Some(false) {
        return Err(HeadError::Framing);
    }
    Ok(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        minor,
        headers: keep_headers.then(|| headers_text(req.headers)),
        body,
    })
}

/// Parses a complete response head.
pub(super) fn parse_response(buf: &[u8], keep_headers: bool) -> Result<ResponseHead, HeadError> {
    let mut stack = [EMPTY_HEADER; STACK_HEADERS];
    match parse_response_with(buf, keep_headers, &mut stack) {
        Err(HeadError::Invalid) if too_many_headers_response(buf) => {
            let mut heap = vec![EMPTY_HEADER; buf.len() / 3 + 1];
            parse_response_with(buf, keep_headers, &mut heap)
        }
        result => result,
    }
}

fn too_many_headers_response(buf: &[u8]) -> bool {
    let mut headers = [EMPTY_HEADER; STACK_HEADERS];
    response_config().parse_response(&mut Response::new(&mut headers), buf)
        == Err(httparse::Error::TooManyHeaders)
}

fn parse_response_with<'b>(
    buf: &'b [u8],
    keep_headers: bool,
    headers: &mut [Header<'b>],
) -> Result<ResponseHead, HeadError> {
    let mut resp = Response::new(headers);
    match response_config().parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        _ => return Err(HeadError::Invalid),
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(HeadError::Invalid);
    };
    Ok(ResponseHead {
        status,
        reason: resp.reason.unwrap_or_default().to_owned(),
        minor,
        headers: keep_headers.then(|| headers_text(resp.headers)),
        body: body_headers(resp.headers)?,
    })
}

/// "Name: value" lines joined by "\n".
fn headers_text(headers: &[Header<'_>]) -> String {
    let len = headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 3)
        .sum();
    let mut text = String::with_capacity(len);
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(h.name);
        text.push_str(": ");
        text.push_str(&String::from_utf8_lossy(h.value));
    }
    text
}

fn body_headers(headers: &[Header<'_>]) -> Result<BodyHeaders, HeadError> {
    let mut body = BodyHeaders::default();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // "5" or, repeated in one field, "5, 5": every value must agree.
            for value in h.value.split(|b| *b == b',') {
                let value = value.trim_ascii();
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Framing);
                }
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(HeadError::Framing)?;
                match body.content_length {
                    Some(m) if m != n => return Err(HeadError::Framing),
                    _ => body.content_length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Codings accumulate over fields; only the last one decides.
            for coding in h.value.split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    body.chunked = Some(coding.eq_ignore_ascii_case(b"chunked"));
                }
            }
        }
    }
    Ok(body)
}

/// What the request line of a head cut short tells, as far as it was read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PartialRequestLine {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) minor: Option<u8>,
}

/// The method, target and minor version of a request head cut short, each
/// when it was read in full.
pub(super) fn request_line(partial: &[u8]) -> PartialRequestLine {
    let mut headers = [EMPTY_HEADER; 0];
    let mut req = Request::new(&mut headers);
    // The fields are filled as far as parsing went, whatever it returns.
    let _ = req.parse(partial);
    PartialRequestLine {
        method: req.method.map(str::to_owned),
        path: req.path.map(str::to_owned),
        minor: req.version,
    }
}

/// The status, reason and minor version of a response head cut short, when
/// its status line was read in full.
pub(super) fn status_line(partial: &[u8]) -> Option<(u16, String, u8)> {
    let mut headers = [EMPTY_HEADER; 0];
    let mut resp = Response::new(&mut headers);
    let _ = response_config().parse_response(&mut resp, partial);
    match (resp.code, resp.reason, resp.version) {
        (Some(status), Some(reason), Some(minor)) => Some((status, reason.to_owned(), minor)),
        _ => None,
    }
}
