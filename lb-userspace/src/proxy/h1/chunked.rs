//! Where a chunked body ends (RFC 9112 §7.1), for request bodies (the guard on
//! hyper's path) and answers (the lean path relays them). The bytes go through
//! unchanged; the scanner only says how many belong to the body. It is as strict as
//! hyper's decoder — CRLF everywhere, no LF inside a chunk extension, sizes that fit in
//! 64 bits — so lb and hyper never disagree on where a body ends: where one would
//! accept and the other refuse, both refuse.

/// Bytes of chunk extensions accepted per body (hyper's bound).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Bytes of trailer fields accepted per body (hyper's bound).
const TRAILER_LIMIT: u64 = 16 * 1024;

#[derive(Debug, Default)]
pub struct ChunkScanner {
    state: State,
    size: u64,
    extensions: u64,
    trailers: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// The first hex digit of a size.
    #[default]
    Start,
    Size,
    /// Spaces or tabs after the size.
    Lws,
    /// A chunk extension, up to its CR.
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field or the final CRLF.
    EndCr,
    /// A trailer field's name, then its value (RFC 9112 §7.1.2: field lines).
    TrailerName,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Why a chunked body cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size does not fit in 64 bits")]
    Overflow,
    #[error("malformed chunked framing")]
    Malformed,
    #[error("chunk extensions or trailers over 16 KiB")]
    TooLarge,
}

impl ChunkScanner {
    /// How many of `bytes` belong to the body (all of them until its end).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() && self.state != State::Done {
            if let State::Data(left) = self.state {
                let k = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += k;
                let left = left - k as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = self.step(b)?;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        Ok(match (self.state, b) {
            (Start | Size, _) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(ChunkError::Overflow)?;
                Size
            }
            (Size | Lws, b' ' | b'\t') => Lws,
            (Size | Lws, b';') => Ext,
            (Size | Lws | Ext, b'\r') => SizeLf,
            (Ext, b'\n') => return Err(ChunkError::Malformed),
            (Ext, _) => {
                self.extensions += 1;
                if self.extensions >= EXTENSIONS_LIMIT {
                    return Err(ChunkError::TooLarge);
                }
                Ext
            }
            (SizeLf, b'\n') => match std::mem::take(&mut self.size) {
                0 => EndCr,
                n => Data(n),
            },
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            // Trailer lines are field lines, strictly: a bare LF or a line with no
            // name would end the body one line early for a client that reads lines
            // leniently, and the bytes after it would be taken as the next answer
            // (found by fuzz/fuzz_targets/answer.rs).
            (EndCr | TrailerName, _) if is_tchar(b) => self.trailer_byte(TrailerName)?,
            (TrailerName, b':') => self.trailer_byte(Trailer)?,
            (Trailer, b'\r') => TrailerLf,
            (Trailer, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => self.trailer_byte(Trailer)?,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => Done,
            _ => return Err(ChunkError::Malformed),
        })
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers >= TRAILER_LIMIT {
            return Err(ChunkError::TooLarge);
        }
        Ok(next)
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

/// A character of a field name (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_whole_or_byte_by_byte() {
        let body = b"4;ext=1\r\nWiki\r\n5 \r\npedia\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut whole = ChunkScanner::default();
        assert_eq!(whole.feed(body), Ok(end));
        assert!(whole.done());
        let mut bytewise = ChunkScanner::default();
        let mut taken = 0;
        for b in body.chunks(1) {
            taken += bytewise.feed(b).expect("valid");
        }
        assert_eq!(taken, end, "stops at the end, not at the bytes after it");
        assert!(bytewise.done());
        let mut unfinished = ChunkScanner::default();
        assert_eq!(unfinished.feed(b"a\r\n0123"), Ok(7));
        assert!(!unfinished.done());
    }

    #[test]
    fn refuses_what_hyper_refuses() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\r\nWikiX",
            b"0\r\n\rX",
            b"4\nWiki\r\n",
            b"4;a\nWiki\r\n",
            b"4\r\nWiki\n",
            b" 4\r\n",
            b"4 5\r\n",
            b"-1\r\n",
            b"0x4\r\n",
            b"0\r\nx-trailer: a\nb\r\n\r\n",
            b"0\r\nno name\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
        ] {
            assert!(ChunkScanner::default().feed(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ChunkScanner::default().feed(b"10000000000000000\r\n"),
            Err(ChunkError::Overflow),
            "a size past 64 bits"
        );
        assert_eq!(
            ChunkScanner::default().feed(b"ffffffffffffffff\r\n"),
            Ok(18),
            "the largest size that fits"
        );
    }
}
