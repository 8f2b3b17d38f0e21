//! Incremental Server-Sent Events parser (WHATWG HTML, "Server-sent events" §9.2.6).
//!
//! [`SseParser`] is the push-based core: feed it bytes in any chunking, pop complete events.
//! [`SseStream`] drives it from a byte stream (`reqwest::Response::bytes_stream()`) and
//! offers `next_event().await`.
//!
//! Follows the spec: lines end with `\n`, `\r\n` or `\r` (a `\r\n` split across chunks is one
//! line end); a leading BOM is dropped; `:` lines are comments; `field: value` loses one
//! space after the colon; `data` lines are joined with `\n`; `id` (without NUL) sets the
//! last event id; `retry` takes digits only; unknown fields are ignored; an event is
//! dispatched on a blank line, and only when it has data (default type `message`).
//!
//! Deliberately stricter than a browser, because providers are machines speaking a fixed
//! format: invalid UTF-8 is an error (not U+FFFD), lines and data are bounded in size, and a
//! stream that ends inside an event (fields seen, or a partial non-comment line, with no
//! blank line after them) reports [`SseError::Truncated`] instead of silently dropping it.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// Longest accepted line (bytes).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Largest accepted event data (bytes).
pub const MAX_DATA_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, `message` when absent.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The last event id seen so far in the stream (it persists across events).
    pub id: Option<String>,
    /// The last `retry` value seen so far.
    pub retry: Option<Duration>,
}

/// A parse failure (everything but `Transport` means the peer broke the format).
#[derive(Debug, thiserror::Error)]
pub enum SseError<E> {
    #[error("event stream transport error: {0}")]
    Transport(E),
    #[error("invalid UTF-8 in event stream")]
    InvalidUtf8,
    #[error("event stream line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("event stream data longer than {0} bytes")]
    DataTooLong(usize),
    #[error("event stream ended in the middle of an event")]
    Truncated,
}

/// A format error of the parser itself (no transport involved).
pub type ParseError = SseError<std::convert::Infallible>;

impl ParseError {
    fn widen<E>(self) -> SseError<E> {
        match self {
            SseError::Transport(never) => match never {},
            SseError::InvalidUtf8 => SseError::InvalidUtf8,
            SseError::LineTooLong(n) => SseError::LineTooLong(n),
            SseError::DataTooLong(n) => SseError::DataTooLong(n),
            SseError::Truncated => SseError::Truncated,
        }
    }
}

/// Push-based SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
    /// The first line has been seen (BOM handling).
    started: bool,
    event_type: String,
    data: String,
    last_id: Option<String>,
    retry: Option<Duration>,
    /// Field lines seen since the last dispatch.
    in_event: bool,
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feed bytes; complete events become available through [`SseParser::pop`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&rest[..pos])?;
            self.end_line()?;
            if rest[pos] == b'\r' {
                match rest.get(pos + 1) {
                    Some(b'\n') => rest = &rest[pos + 2..],
                    Some(_) => rest = &rest[pos + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[pos + 1..];
            }
        }
        self.append(rest)
    }

    /// The next complete event, if any.
    pub fn pop(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// End of stream: `Err(Truncated)` when it ended inside an event.
    pub fn finish(&mut self) -> Result<(), ParseError> {
        let partial_line = !self.line.is_empty() && !self.line.starts_with(b":");
        if self.in_event || partial_line {
            Err(SseError::Truncated)
        } else {
            Ok(())
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong(MAX_LINE_BYTES));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), ParseError> {
        let raw = std::mem::take(&mut self.line);
        let mut bytes = raw.as_slice();
        if !self.started {
            self.started = true;
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let line = std::str::from_utf8(bytes).map_err(|_| SseError::InvalidUtf8)?;
        self.process_line(line)?;
        // Reuse the allocation.
        self.line = raw;
        self.line.clear();
        Ok(())
    }

    fn process_line(&mut self, line: &str) -> Result<(), ParseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        self.in_event = true;
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_DATA_BYTES {
                    return Err(SseError::DataTooLong(MAX_DATA_BYTES));
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        self.in_event = false;
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the trailing '\n'
        self.ready.push_back(SseEvent {
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
            id: self.last_id.clone(),
            retry: self.retry,
        });
    }
}

/// SSE events read from a byte stream.
pub struct SseStream<S> {
    inner: S,
    parser: SseParser,
    done: bool,
}

impl<S, B, E> SseStream<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
{
    pub fn new(inner: S) -> SseStream<S> {
        SseStream {
            inner,
            parser: SseParser::new(),
            done: false,
        }
    }

    /// The next event; `Ok(None)` at a clean end of stream. After an error or the end, keeps
    /// returning `Ok(None)`.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, SseError<E>> {
        loop {
            if let Some(event) = self.parser.pop() {
                return Ok(Some(event));
            }
            if self.done {
                return Ok(None);
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = self.parser.push(chunk.as_ref()) {
                        self.done = true;
                        return Err(e.widen());
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(SseError::Transport(e));
                }
                None => {
                    self.done = true;
                    self.parser.finish().map_err(ParseError::widen)?;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> (Vec<SseEvent>, Result<(), ParseError>) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            if let Err(e) = parser.push(chunk) {
                return (events, Err(e));
            }
            while let Some(event) = parser.pop() {
                events.push(event);
            }
        }
        (events, parser.finish())
    }

    fn data_of(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    /// Feed `input` split at every possible pair of positions: the result must not depend
    /// on the chunking.
    fn assert_chunking_invariant(input: &[u8]) -> Vec<SseEvent> {
        let (whole, end) = parse_all(&[input]);
        assert!(end.is_ok());
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (events, end) = parse_all(&[&input[..i], &input[i..j], &input[j..]]);
                assert!(end.is_ok(), "split at {i},{j}");
                assert_eq!(events, whole, "split at {i},{j}");
            }
        }
        whole
    }

    #[test]
    fn basic_fields() {
        let (events, end) =
            parse_all(&[b"event: delta\ndata: {\"a\":1}\nid: 7\n\ndata:no-space\n\n"]);
        end.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "delta");
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].data, "no-space");
        assert_eq!(events[1].id.as_deref(), Some("7"), "last event id persists");
    }

    #[test]
    fn line_endings_all_kinds_and_split() {
        let events =
            assert_chunking_invariant(b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\n");
        assert_eq!(data_of(&events), ["a", "b", "c", "d"]);
    }

    #[test]
    fn cr_at_chunk_end_then_lf() {
        let (events, end) = parse_all(&[b"data: x\r", b"\n\r", b"\n"]);
        end.unwrap();
        assert_eq!(data_of(&events), ["x"]);
        // A lone CR at the end of a chunk followed by a non-LF starts a new line.
        let (events, end) = parse_all(&[b"data: x\r", b"\r", b"data: y\n\n"]);
        end.unwrap();
        assert_eq!(data_of(&events), ["x", "y"]);
    }

    #[test]
    fn multiline_data_and_empty_data() {
        let (events, end) = parse_all(&[b"data: one\ndata\ndata:  two\n\ndata\n\n"]);
        end.unwrap();
        assert_eq!(data_of(&events), ["one\n\n two", ""]);
    }

    #[test]
    fn comments_and_unknown_fields_ignored_and_no_data_no_dispatch() {
        let (events, end) =
            parse_all(&[b": keep-alive\n\nevent: ping\n\nfoo: bar\ndata: x\n\n:tail comment"]);
        end.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].event, "message",
            "event type resets after an empty event"
        );
        assert_eq!(events[0].data, "x");
    }

    #[test]
    fn id_with_nul_ignored_and_retry_digits_only() {
        let (events, end) =
            parse_all(&[b"id: a\0b\nretry: 1x\ndata: 1\n\nretry: 250\nid\ndata: 2\n\n"]);
        end.unwrap();
        assert_eq!(events[0].id, None);
        assert_eq!(events[0].retry, None);
        assert_eq!(events[1].id.as_deref(), Some(""));
        assert_eq!(events[1].retry, Some(Duration::from_millis(250)));
    }

    #[test]
    fn field_without_colon_and_colon_in_value() {
        let (events, end) = parse_all(&[b"data\ndata: a: b\n\n"]);
        end.unwrap();
        assert_eq!(events[0].data, "\na: b");
    }

    #[test]
    fn utf8_split_across_chunks() {
        let input = "data: héllo wörld 🌍 — ok\n\n".as_bytes();
        let events = assert_chunking_invariant(input);
        assert_eq!(data_of(&events), ["héllo wörld 🌍 — ok"]);
        // Byte-by-byte.
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (events, end) = parse_all(&chunks);
        end.unwrap();
        assert_eq!(data_of(&events), ["héllo wörld 🌍 — ok"]);
    }

    #[test]
    fn bom_stripped_only_at_start() {
        let (events, end) = parse_all(&[b"\xEF\xBB", b"\xBFdata: x\n\n"]);
        end.unwrap();
        assert_eq!(data_of(&events), ["x"]);
        let (events, end) = parse_all(&[b"data: x\n\n\xEF\xBB\xBFdata: y\n\n"]);
        end.unwrap();
        assert_eq!(
            data_of(&events),
            ["x"],
            "a later BOM makes an unknown field name"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let (_, end) = parse_all(&[b"data: \xff\xfe\n\n"]);
        assert!(matches!(end, Err(SseError::InvalidUtf8)));
        // A truncated multi-byte sequence at a line end is invalid too.
        let (_, end) = parse_all(&[b"data: \xe2\x82\n\n"]);
        assert!(matches!(end, Err(SseError::InvalidUtf8)));
    }

    #[test]
    fn truncation_detected() {
        for input in [
            &b"data: x"[..],
            b"data: x\n",
            b"event: a\n",
            b"data: x\n\ndata: partial",
        ] {
            let (_, end) = parse_all(&[input]);
            assert!(
                matches!(end, Err(SseError::Truncated)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        for input in [&b""[..], b"data: x\n\n", b"data: x\n\n: comment", b"\n\n\n"] {
            let (_, end) = parse_all(&[input]);
            assert!(end.is_ok(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn oversized_line_rejected() {
        let mut parser = SseParser::new();
        let big = vec![b'a'; MAX_LINE_BYTES];
        parser.push(b"data: ").unwrap();
        assert!(matches!(parser.push(&big), Err(SseError::LineTooLong(_))));
    }

    #[tokio::test]
    async fn stream_api() {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(b"event: a\nda".to_vec()),
            Ok(b"ta: 1\n".to_vec()),
            Ok(b"\ndata: 2\n\n".to_vec()),
        ];
        let mut stream = SseStream::new(futures::stream::iter(chunks));
        assert_eq!(stream.next_event().await.unwrap().unwrap().data, "1");
        assert_eq!(stream.next_event().await.unwrap().unwrap().data, "2");
        assert!(stream.next_event().await.unwrap().is_none());
        assert!(stream.next_event().await.unwrap().is_none());

        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(b"data: 1\n\n".to_vec()),
            Err(std::io::Error::other("reset")),
        ];
        let mut stream = SseStream::new(futures::stream::iter(chunks));
        assert_eq!(stream.next_event().await.unwrap().unwrap().data, "1");
        assert!(matches!(
            stream.next_event().await,
            Err(SseError::Transport(_))
        ));

        let chunks: Vec<Result<&[u8], std::io::Error>> = vec![Ok(b"data: 1\n")];
        let mut stream = SseStream::new(futures::stream::iter(chunks));
        assert!(matches!(
            stream.next_event().await,
            Err(SseError::Truncated)
        ));
    }
}
