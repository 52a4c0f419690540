//! Finding the end of a chunked message body (RFC 9112 §7.1) while its bytes pass through
//! unchanged: the front door forwards a chunked response verbatim and only needs to know where it
//! ends, to keep the upstream connection for the next request.
//!
//! Invariants: the scanner never reads past the end of the message (what follows belongs to the
//! next response); any byte that breaks the grammar is an error, never a guess; sizes that do not
//! fit in 64 bits are errors. Chunk extensions and trailer fields are passed over, not
//! interpreted.

/// The body is not valid chunked coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line; no digit yet.
    SizeStart,
    /// Inside the hex digits of a chunk size.
    Size,
    /// After the size: optional whitespace and extensions up to the line end.
    Extension,
    /// Saw CR ending the size line; LF must follow.
    SizeLf,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// After chunk data: CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (an empty line ends the message).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR ending a trailer line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    Done,
}

/// Tracks a chunked body across the reads it arrives in.
#[derive(Clone, Debug)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    /// Bytes so far of the current extension or trailer line.
    line_len: usize,
}

/// Longest chunk-size line or trailer line accepted (extensions included).
const MAX_LINE: usize = 8 * 1024;

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::SizeStart,
            size: 0,
            line_len: 0,
        }
    }

    /// Scans the next bytes of the body. Returns `Some(n)` when the message ends after the
    /// first `n` bytes of `bytes` (the rest is not part of it), `None` when all of `bytes`
    /// belongs to the message and more is to come.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let available = (bytes.len() - i) as u64;
                let take = left.min(available);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::SizeStart | State::Size => match hex_value(b) {
                    Some(digit) => {
                        if self.size > (u64::MAX >> 4) {
                            return Err(ChunkedError("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(digit);
                        State::Size
                    }
                    None if self.state == State::SizeStart => {
                        return Err(ChunkedError("chunk size expected"))
                    }
                    None => self.after_size(b)?,
                },
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkedError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => State::SizeLf,
                        b'\n' => self.size_line_done(),
                        // Extensions: visible characters, whitespace, quoted strings alike.
                        b'\t' | b' '..=b'~' | 0x80..=0xff => State::Extension,
                        _ => return Err(ChunkedError("control byte in chunk extension")),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("CR without LF after chunk size"));
                    }
                    self.size_line_done()
                }
                State::Data(_) => unreachable!("handled above"),
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::SizeStart,
                    _ => return Err(ChunkedError("chunk data longer than its size")),
                },
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("CR without LF after chunk data"));
                    }
                    State::SizeStart
                }
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => State::Done,
                    _ => {
                        self.line_len = 1;
                        State::Trailer
                    }
                },
                State::Trailer => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkedError("trailer line too long"));
                    }
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => State::TrailerStart,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => State::Trailer,
                        _ => return Err(ChunkedError("control byte in trailer")),
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("CR without LF in trailer"));
                    }
                    State::TrailerStart
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("CR without LF at the end"));
                    }
                    State::Done
                }
                State::Done => unreachable!("the loop stops at the end"),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn after_size(&mut self, b: u8) -> Result<State, ChunkedError> {
        self.line_len = 0;
        match b {
            b'\r' => Ok(State::SizeLf),
            b'\n' => Ok(self.size_line_done()),
            b';' | b' ' | b'\t' => Ok(State::Extension),
            _ => Err(ChunkedError("bad byte after chunk size")),
        }
    }

    fn size_line_done(&mut self) -> State {
        let size = std::mem::take(&mut self.size);
        if size == 0 {
            State::TrailerStart
        } else {
            State::Data(size)
        }
    }
}

/// The value of one hex digit (either case).
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(chunks: &[Vec<u8>], trailers: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for trailer in trailers {
            out.extend_from_slice(trailer.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn end_of(body: &[u8], cuts: &[usize]) -> Result<Option<usize>, ChunkedError> {
        let mut scanner = ChunkedScanner::new();
        let mut start = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        points.push(body.len());
        for point in points {
            if point < start {
                continue;
            }
            if let Some(n) = scanner.feed(&body[start..point])? {
                return Ok(Some(start + n));
            }
            start = point;
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_and_not_beyond() {
        let body = encode(&[b"hello".to_vec(), b" world".to_vec()], &[]);
        let mut with_next = body.clone();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(end_of(&with_next, &[]).unwrap(), Some(body.len()));
        let trailers = encode(&[b"x".to_vec()], &["Expires: never", "X-Sum: 1"]);
        assert_eq!(end_of(&trailers, &[3, 9]).unwrap(), Some(trailers.len()));
        // Extensions and bare LF line ends (tolerated by RFC 9112 §2.2 for recipients).
        let loose = b"5;name=\"v\"\r\nhello\r\n0\n\n";
        assert_eq!(end_of(loose, &[]).unwrap(), Some(loose.len()));
    }

    #[test]
    fn broken_grammar_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhello!!\r\n",
            b"\r\n",
            b"5\rxhello",
            b"ffffffffffffffffff\r\n",
            b"0\r\nX: \x01\r\n\r\n",
        ] {
            assert!(end_of(bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unfinished_body_wants_more() {
        let body = encode(&[b"hello".to_vec()], &[]);
        assert_eq!(end_of(&body[..body.len() - 1], &[]).unwrap(), None);
    }

    proptest! {
        #[test]
        fn any_split_of_any_body_ends_exactly_at_its_end(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let body = encode(&chunks, &["A: b"]);
            let mut stream = body.clone();
            stream.extend_from_slice(&tail);
            prop_assert_eq!(end_of(&stream, &cuts).unwrap(), Some(body.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = end_of(&bytes, &[7, 13]);
        }
    }
}
