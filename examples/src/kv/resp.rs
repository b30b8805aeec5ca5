//! RESP2, the Redis protocol: an incremental request parser and a reply
//! encoder.
//!
//! [`RequestParser`] takes bytes as they arrive ([`RequestParser::feed`]),
//! in chunks of any size, and hands out each complete request in turn
//! ([`RequestParser::next`]), borrowed from its buffer. It understands both
//! request forms Redis serves: arrays of bulk strings (what `redis-cli`,
//! `redis-benchmark` and client libraries send) and inline commands
//! (`PING\r\n`, what a person types into `nc`, with Redis's quoting rules).
//! Pipelining needs nothing more: feed what arrived, take requests until
//! `Ok(None)`.
//!
//! Limits ([`Limits`], Redis's defaults) bound what one request can make
//! the parser buffer. A malformed request is a [`ProtocolError`] whose
//! `Display` is Redis's wording (`Protocol error: invalid bulk length`); the
//! server writes it as an error reply and closes that connection, as Redis
//! does. Requests before the malformed one are handed out first.
//!
//! The `write_*` functions append replies to a `Vec<u8>`.
//!
//! ```
//! use ringwire_examples::kv::resp::{self, Limits, RequestParser};
//!
//! let mut parser = RequestParser::new(Limits::default());
//! parser.feed(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPI");
//! let request = parser.next().unwrap().unwrap();
//! assert_eq!(request.args().collect::<Vec<_>>(), [&b"ECHO"[..], b"hi"]);
//! assert!(parser.next().unwrap().is_none()); // "PI" waits for more
//! parser.feed(b"NG\r\n");
//! assert_eq!(parser.next().unwrap().unwrap().name(), b"PING");
//!
//! let mut out = Vec::new();
//! resp::write_bulk(&mut out, b"hi");
//! resp::write_simple(&mut out, b"PONG");
//! assert_eq!(out, b"$2\r\nhi\r\n+PONG\r\n");
//! ```

use std::fmt;
use std::ops::Range;

/// Buffer capacity the parser keeps between requests; past it, memory is
/// released once the large request has been handed out.
const RETAIN: usize = 1 << 20;

/// How much one request may make the parser hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (one argument), in bytes. Redis's
    /// `proto-max-bulk-len` default is 512 MiB.
    pub max_bulk_len: usize,
    /// Most arguments in one request. Redis 6 refused more than 1024 * 1024.
    pub max_array_len: usize,
    /// Longest inline request line, and longest `*N` / `$N` header line, in
    /// bytes. Redis's `PROTO_INLINE_MAX_SIZE` is 64 KiB.
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk_len: 512 << 20,
            max_array_len: 1 << 20,
            max_inline_len: 64 << 10,
        }
    }
}

impl Limits {
    /// The most bytes the parser holds for one incomplete request under
    /// these limits: the `*N` line, then for each argument its `$N` line,
    /// its bytes and their CRLF. What it holds beyond that is complete
    /// requests not yet taken with [`RequestParser::next`].
    pub fn max_request_bytes(&self) -> usize {
        // A header line: its type byte, at most `max_inline_len` bytes of
        // text, CRLF.
        let line = self.max_inline_len.saturating_add(3);
        let arg = line.saturating_add(self.max_bulk_len).saturating_add(2);
        line.saturating_add(self.max_array_len.saturating_mul(arg))
    }
}

/// A malformed request. `Display` gives Redis's wording (the reply is
/// `-ERR ` followed by it); the connection should be closed after replying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline request line longer than [`Limits::max_inline_len`].
    TooBigInline,
    /// A `*N` line longer than [`Limits::max_inline_len`].
    TooBigMultibulkCount,
    /// `*N` where N is not a number or above [`Limits::max_array_len`].
    InvalidMultibulkLength,
    /// An array element that is not a bulk string (holds the byte found).
    ExpectedDollar(u8),
    /// A `$N` line longer than [`Limits::max_inline_len`].
    TooBigBulkCount,
    /// `$N` where N is not a number, negative or above
    /// [`Limits::max_bulk_len`].
    InvalidBulkLength,
    /// An inline request with an unterminated quote, or a closing quote not
    /// followed by a space.
    UnbalancedQuotes,
    /// A header line or a bulk string not followed by CRLF. (Redis skips two
    /// bytes there without looking; this parser checks.)
    ExpectedCrlf,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ProtocolError::TooBigInline => f.write_str("too big inline request"),
            ProtocolError::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::ExpectedDollar(b) if b.is_ascii_graphic() || *b == b' ' => {
                write!(f, "expected '$', got '{}'", *b as char)
            }
            ProtocolError::ExpectedDollar(b) => write!(f, "expected '$', got '\\x{b:02x}'"),
            ProtocolError::TooBigBulkCount => f.write_str("too big bulk count string"),
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            ProtocolError::ExpectedCrlf => f.write_str("expected CRLF"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl ProtocolError {
    /// Appends the error reply Redis sends before closing the connection:
    /// `-ERR Protocol error: ...\r\n`.
    pub fn write_reply(&self, out: &mut Vec<u8>) {
        write_error(out, format!("ERR {self}").as_bytes());
    }
}

/// One request: its arguments, borrowed from the parser. Never empty (the
/// parser skips empty requests, as Redis does).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    data: &'a [u8],
    spans: &'a [Range<usize>],
}

impl<'a> Request<'a> {
    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Always false: empty requests are skipped.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &'a [u8] {
        self.arg(0).unwrap_or_default()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        let span = self.spans.get(i)?;
        self.data.get(span.clone())
    }

    /// All arguments, the command name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let data = self.data;
        self.spans.iter().map(move |span| &data[span.clone()])
    }

    /// The arguments as owned byte strings.
    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.args().map(<[u8]>::to_vec).collect()
    }
}

/// Where the parser is within the request that starts at `start`.
#[derive(Clone, Copy, Debug)]
enum State {
    /// At the first byte of a request.
    Idle,
    /// Inside `*N`: `remaining` bulk strings to go, the next one's `$` line
    /// at `pos` (relative to the request start); `bulk` is the length of
    /// the bulk string whose `$N` line has been read, its bytes at `pos`.
    Array {
        remaining: usize,
        pos: usize,
        bulk: Option<usize>,
    },
}

/// An incremental RESP2 request parser. See the [module docs](self).
///
/// Memory: the bytes of complete requests not yet taken, plus at most
/// [`Limits::max_request_bytes`] for the request in progress. Each byte is
/// scanned once however the input is chunked.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Start (in `buf`) of the request being parsed.
    start: usize,
    state: State,
    /// Offset (relative to `start`) up to which the current line holds no
    /// terminator: each byte is scanned once.
    scanned: usize,
    /// Argument spans of the request being parsed (relative to `start`, or
    /// into `inline` for an inline request).
    spans: Vec<Range<usize>>,
    /// Unescaped arguments of an inline request.
    inline: Vec<u8>,
    failed: Option<ProtocolError>,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            buf: Vec::new(),
            start: 0,
            state: State::Idle,
            scanned: 0,
            spans: Vec::new(),
            inline: Vec::new(),
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends bytes received from the peer. After an error, input is
    /// dropped (the connection is to be closed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            // Drop what was handed out; keep the request in progress.
            self.buf.drain(..self.start);
            self.start = 0;
            // And do not hold on to the memory of a huge request once it
            // has been handed out.
            if self.buf.capacity() > RETAIN && self.buf.len() <= RETAIN / 2 {
                self.buf.shrink_to(RETAIN / 2);
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: complete requests not yet taken and the request in
    /// progress.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete request, `Ok(None)` if more input is needed. A
    /// protocol error is returned again on every later call.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Request<'_>>, ProtocolError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        match self.parse() {
            Ok(Some((end, inline))) => {
                let from = self.start;
                self.start += end;
                let data = if inline {
                    &self.inline[..]
                } else {
                    &self.buf[from..from + end]
                };
                Ok(Some(Request {
                    data,
                    spans: &self.spans,
                }))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = Some(error);
                self.buf = Vec::new();
                self.start = 0;
                Err(error)
            }
        }
    }

    /// Parses the request at `start`: `Some((length, is_inline))` once it
    /// is complete, with its arguments in `spans`.
    fn parse(&mut self) -> Result<Option<(usize, bool)>, ProtocolError> {
        loop {
            let input = &self.buf[self.start..];
            match self.state {
                State::Idle => {
                    let Some(&first) = input.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        match self.parse_inline()? {
                            Inline::Request(len) => return Ok(Some((len, true))),
                            Inline::Incomplete => return Ok(None),
                            Inline::Blank => continue,
                        }
                    }
                    let Some(end) = self.line(1, ProtocolError::TooBigMultibulkCount)? else {
                        return Ok(None);
                    };
                    let count = parse_i64(&self.buf[self.start + 1..self.start + end])
                        .ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if count > 0 && count as u64 > self.limits.max_array_len as u64 {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    }
                    if count <= 0 {
                        // An empty request: skipped, as Redis does.
                        self.start += end + 2;
                        continue;
                    }
                    self.spans.clear();
                    self.state = State::Array {
                        remaining: count as usize,
                        pos: end + 2,
                        bulk: None,
                    };
                }
                State::Array {
                    remaining,
                    pos,
                    bulk: None,
                } => {
                    let Some(&first) = input.get(pos) else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let Some(end) = self.line(pos + 1, ProtocolError::TooBigBulkCount)? else {
                        return Ok(None);
                    };
                    let len = parse_i64(&self.buf[self.start + pos + 1..self.start + end])
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if len < 0 || len as u64 > self.limits.max_bulk_len as u64 {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    self.state = State::Array {
                        remaining,
                        pos: end + 2,
                        bulk: Some(len as usize),
                    };
                }
                State::Array {
                    remaining,
                    pos,
                    bulk: Some(len),
                } => {
                    if input.len() < pos + len + 2 {
                        return Ok(None);
                    }
                    if &input[pos + len..pos + len + 2] != b"\r\n" {
                        return Err(ProtocolError::ExpectedCrlf);
                    }
                    self.spans.push(pos..pos + len);
                    let next = pos + len + 2;
                    if remaining == 1 {
                        self.state = State::Idle;
                        return Ok(Some((next, false)));
                    }
                    self.state = State::Array {
                        remaining: remaining - 1,
                        pos: next,
                        bulk: None,
                    };
                }
            }
        }
    }

    /// Finds the CRLF ending the header line whose text starts at `from`
    /// (relative to `start`): `Some(offset of the CR)`. A line longer than
    /// the inline limit is `too_big`, whether or not its end has arrived, so
    /// that the outcome does not depend on how the input was chunked.
    fn line(
        &mut self,
        from: usize,
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let input = &self.buf[self.start..];
        let scan_from = self.scanned.max(from);
        let cr = input[scan_from..]
            .iter()
            .position(|&b| b == b'\r')
            .map(|i| scan_from + i);
        let Some(cr) = cr else {
            if input.len() - from > self.limits.max_inline_len {
                return Err(too_big);
            }
            self.scanned = input.len();
            return Ok(None);
        };
        if cr - from > self.limits.max_inline_len {
            return Err(too_big);
        }
        self.scanned = cr;
        match input.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => {
                self.scanned = 0;
                Ok(Some(cr))
            }
            Some(_) => Err(ProtocolError::ExpectedCrlf),
        }
    }

    /// Parses an inline request (a line ending in LF, optionally CRLF),
    /// splitting it as Redis's `sdssplitargs` does. A blank line is
    /// consumed and skipped.
    fn parse_inline(&mut self) -> Result<Inline, ProtocolError> {
        let input = &self.buf[self.start..];
        let lf = input[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| self.scanned + i);
        let Some(lf) = lf else {
            if input.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInline);
            }
            self.scanned = input.len();
            return Ok(Inline::Incomplete);
        };
        if lf > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigInline);
        }
        self.scanned = 0;
        let line = match input[..lf].strip_suffix(b"\r") {
            Some(line) => line,
            None => &input[..lf],
        };
        split_args(line, &mut self.inline, &mut self.spans)?;
        if self.spans.is_empty() {
            self.start += lf + 1;
            return Ok(Inline::Blank);
        }
        Ok(Inline::Request(lf + 1))
    }
}

/// What [`RequestParser::parse_inline`] found.
enum Inline {
    /// A request of this many bytes (its line and LF).
    Request(usize),
    /// A blank line, consumed.
    Blank,
    /// No LF yet.
    Incomplete,
}

/// Splits an inline request line into arguments the way Redis's
/// `sdssplitargs` does: whitespace separates; `"..."` takes `\xHH`, `\n`,
/// `\r`, `\t`, `\b`, `\a` and `\<any>` escapes; `'...'` takes `\'`; a
/// closing quote must be followed by whitespace or the end.
fn split_args(
    line: &[u8],
    out: &mut Vec<u8>,
    spans: &mut Vec<Range<usize>>,
) -> Result<(), ProtocolError> {
    out.clear();
    spans.clear();
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let begin = out.len();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = line.get(i).copied();
            if in_double {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                        out.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        out.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // The closing quote must be followed by a space or
                        // nothing.
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                }
            } else if in_single {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        out.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if is_space(b) => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(b) => out.push(b),
                }
            }
            i += 1;
        }
        spans.push(begin..out.len());
    }
}

/// Parses a signed decimal integer exactly as Redis's `string2ll` does: an
/// optional `-`, no `+`, no spaces, no leading zeros, at most 20 bytes, in
/// `i64` range.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        if value > i64::MIN.unsigned_abs() {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

/// Appends `n` in decimal.
pub(crate) fn write_decimal(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `bytes` with CR and LF replaced by spaces (a simple string or an
/// error cannot hold them).
fn push_line(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(
        bytes
            .iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

/// Appends a simple string reply: `+OK\r\n`. CR and LF become spaces.
pub fn write_simple(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'+');
    push_line(out, text);
    out.extend_from_slice(b"\r\n");
}

/// Appends an error reply: `-ERR message\r\n`. `message` carries its own
/// prefix (`ERR`, `WRONGTYPE`, ...). CR and LF become spaces.
pub fn write_error(out: &mut Vec<u8>, message: &[u8]) {
    out.push(b'-');
    push_line(out, message);
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply: `:42\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    write_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply: `$3\r\nbar\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    write_decimal(out, data.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk reply for `Some`, a null bulk for `None`.
pub fn write_optional_bulk(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(data) => write_bulk(out, data),
        None => write_null_bulk(out),
    }
}

/// Appends the null bulk reply `$-1\r\n` (a missing value).
pub fn write_null_bulk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header for `len` elements: `*2\r\n`; the elements
/// follow.
pub fn write_array(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    write_decimal(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null array reply `*-1\r\n`.
pub fn write_null_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*-1\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// Feeds `chunks` and collects every request, then the error if any.
    fn run(limits: Limits, chunks: &[&[u8]]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
        let mut parser = RequestParser::new(limits);
        let mut requests = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            loop {
                match parser.next() {
                    Ok(Some(request)) => requests.push(request.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (requests, Some(e)),
                }
            }
        }
        (requests, None)
    }

    fn whole(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
        run(Limits::default(), &[input])
    }

    const PIPELINE: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n\
        PING\r\n\
        *0\r\n*-1\r\n\r\n   \r\n\
        *1\r\n$0\r\n\r\n\
        set  \"a b\" 'c\\'d' \"\\x41\\n\\q\"\n\
        *2\r\n$4\r\nMGET\r\n$10\r\n0123456789\r\n";

    fn pipeline_requests() -> Vec<Vec<Vec<u8>>> {
        vec![
            args(&["SET", "key", "va\r\nl"]),
            args(&["PING"]),
            vec![Vec::new()],
            args(&["set", "a b", "c'd", "A\nq"]),
            args(&["MGET", "0123456789"]),
        ]
    }

    #[test]
    fn a_pipelined_stream_in_one_piece() {
        assert_eq!(whole(PIPELINE), (pipeline_requests(), None));
    }

    #[test]
    fn every_split_point_gives_the_same_requests() {
        for cut in 0..=PIPELINE.len() {
            let (a, b) = PIPELINE.split_at(cut);
            assert_eq!(
                run(Limits::default(), &[a, b]),
                (pipeline_requests(), None),
                "split at {cut}"
            );
        }
        for cut1 in 0..=PIPELINE.len() {
            for cut2 in cut1..=PIPELINE.len() {
                let chunks = [&PIPELINE[..cut1], &PIPELINE[cut1..cut2], &PIPELINE[cut2..]];
                assert_eq!(
                    run(Limits::default(), &chunks),
                    (pipeline_requests(), None),
                    "split at {cut1} and {cut2}"
                );
            }
        }
        let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
        assert_eq!(run(Limits::default(), &bytes), (pipeline_requests(), None));
    }

    #[test]
    fn requests_before_an_error_are_handed_out_and_the_error_sticks() {
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(b"PING\r\n*1\r\n$x\r\nPING\r\n");
        assert_eq!(parser.next().unwrap().unwrap().name(), b"PING");
        assert_eq!(parser.next().unwrap_err(), ProtocolError::InvalidBulkLength);
        parser.feed(b"PING\r\n");
        assert_eq!(parser.next().unwrap_err(), ProtocolError::InvalidBulkLength);
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn malformed_requests() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", InvalidMultibulkLength),
            (b"*\r\n", InvalidMultibulkLength),
            (b"*01\r\n", InvalidMultibulkLength),
            (b"*+1\r\n", InvalidMultibulkLength),
            (b"*1048577\r\n", InvalidMultibulkLength),
            (b"*99999999999999999999\r\n", InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", ExpectedDollar(b':')),
            (b"*1\r\n\x00", ExpectedDollar(0)),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n$\r\n", InvalidBulkLength),
            (b"*1\r\n$536870913\r\n", InvalidBulkLength),
            (b"*1\r\n$3\r\nabcde\r\n", ExpectedCrlf),
            (b"*1\r\n$3\r\nabc\n\r", ExpectedCrlf),
            (b"*1\rx", ExpectedCrlf),
            (b"*1\r\n$1\rx", ExpectedCrlf),
            (b"SET \"a\n", UnbalancedQuotes),
            (b"SET \"a\"b\n", UnbalancedQuotes),
            (b"SET 'a\n", UnbalancedQuotes),
            (b"SET 'a'b\r\n", UnbalancedQuotes),
        ];
        for (input, expected) in cases {
            assert_eq!(
                whole(input).1,
                Some(*expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            ExpectedDollar(b':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            InvalidMultibulkLength.to_string(),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            ExpectedDollar(0).to_string(),
            "Protocol error: expected '$', got '\\x00'"
        );
        let mut out = Vec::new();
        InvalidBulkLength.write_reply(&mut out);
        assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    }

    #[test]
    fn limits_are_enforced_however_the_input_is_chunked() {
        let limits = Limits {
            max_bulk_len: 8,
            max_array_len: 3,
            max_inline_len: 16,
        };
        use ProtocolError::*;
        // An inline line may hold 16 bytes before its LF (its CR included).
        let long_inline = [b"GET ".as_slice(), &[b'k'; 13], b"\r\n"].concat();
        let just_too_long = [b"GET ".as_slice(), &[b'k'; 12], b"\r\n"].concat();
        let ok_inline = [b"GET ".as_slice(), &[b'k'; 11], b"\r\n"].concat();
        let ok_lf_only = [b"GET ".as_slice(), &[b'k'; 12], b"\n"].concat();
        let cases: Vec<(Vec<u8>, Option<ProtocolError>, usize)> = vec![
            (b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n".to_vec(), None, 1),
            (b"*4\r\n".to_vec(), Some(InvalidMultibulkLength), 0),
            (b"*1\r\n$8\r\n01234567\r\n".to_vec(), None, 1),
            (b"*1\r\n$9\r\n".to_vec(), Some(InvalidBulkLength), 0),
            (long_inline.clone(), Some(TooBigInline), 0),
            (
                long_inline[..long_inline.len() - 2].to_vec(),
                Some(TooBigInline),
                0,
            ),
            (just_too_long, Some(TooBigInline), 0),
            (ok_inline, None, 1),
            (ok_lf_only, None, 1),
            ([b"\n".repeat(40), b"PING\n".to_vec()].concat(), None, 1),
            (
                [b"*".as_slice(), &[b'0'; 17], b"\r\n"].concat(),
                Some(TooBigMultibulkCount),
                0,
            ),
            (
                [b"*".as_slice(), &[b'0'; 17]].concat(),
                Some(TooBigMultibulkCount),
                0,
            ),
            (
                [b"*".as_slice(), &[b'0'; 16], b"\r\n"].concat(),
                Some(InvalidMultibulkLength),
                0,
            ),
            (
                [b"*1\r\n$".as_slice(), &[b'0'; 17]].concat(),
                Some(TooBigBulkCount),
                0,
            ),
        ];
        for (input, error, count) in cases {
            for chunk in 1..=input.len() {
                let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
                let (requests, got) = run(limits, &chunks);
                assert_eq!(
                    (requests.len(), got),
                    (count, error),
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn memory_stays_bounded_while_a_request_is_incomplete() {
        let limits = Limits {
            max_bulk_len: 100,
            max_array_len: 4,
            max_inline_len: 32,
        };
        let mut parser = RequestParser::new(limits);
        parser.feed(b"*4\r\n");
        for _ in 0..4 {
            parser.feed(b"$100\r\n");
            parser.feed(&[b'x'; 100]);
            assert!(parser.next().unwrap().is_none());
            parser.feed(b"\r\n");
        }
        assert!(parser.buffered() <= limits.max_request_bytes());
        assert_eq!(parser.next().unwrap().unwrap().len(), 4);
        assert!(parser.next().unwrap().is_none());
        parser.feed(b"");
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn the_memory_of_a_huge_request_is_released() {
        let mut parser = RequestParser::new(Limits::default());
        let big = vec![b'x'; 4 * RETAIN];
        parser.feed(format!("*2\r\n$4\r\nECHO\r\n${}\r\n", big.len()).as_bytes());
        parser.feed(&big);
        parser.feed(b"\r\n");
        assert_eq!(
            parser.next().unwrap().unwrap().arg(1).map(<[u8]>::len),
            Some(big.len())
        );
        assert!(parser.next().unwrap().is_none());
        parser.feed(b"PING\r\n");
        assert!(parser.buf.capacity() <= RETAIN);
        assert_eq!(parser.next().unwrap().unwrap().name(), b"PING");
    }

    #[test]
    fn request_accessors() {
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$0\r\n\r\n");
        let r = parser.next().unwrap().unwrap();
        assert_eq!((r.len(), r.is_empty(), r.name()), (3, false, &b"set"[..]));
        assert_eq!(
            (r.arg(1), r.arg(2), r.arg(3)),
            (Some(&b"k"[..]), Some(&b""[..]), None)
        );
    }

    #[test]
    fn integers_parse_like_string2ll() {
        for (text, value) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("00", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1.5", None),
            ("18446744073709551616", None),
            ("000000000000000000001", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), value, "{text:?}");
        }
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        write_simple(&mut out, b"OK");
        write_error(&mut out, b"ERR bad\r\nthing");
        write_integer(&mut out, 0);
        write_integer(&mut out, -42);
        write_integer(&mut out, i64::MIN);
        write_bulk(&mut out, b"");
        write_bulk(&mut out, b"a\r\nb");
        write_optional_bulk(&mut out, None);
        write_optional_bulk(&mut out, Some(b"x"));
        write_null_bulk(&mut out);
        write_array(&mut out, 2);
        write_null_array(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n-ERR bad  thing\r\n:0\r\n:-42\r\n:-9223372036854775808\r\n\
             $0\r\n\r\n$4\r\na\r\nb\r\n$-1\r\n$1\r\nx\r\n$-1\r\n*2\r\n*-1\r\n"
        );
    }
}
