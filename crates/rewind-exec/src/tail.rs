//! The end of a stream: its last [`TAIL_BYTES`] bytes, and its last complete line.

/// How much of stdout and stderr is kept.
pub const TAIL_BYTES: usize = 4096;

/// Longest last line kept whole (for JSON output).
const MAX_LINE: usize = 1 << 20;

/// The tail of a stream, fed chunk by chunk.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    buf: Vec<u8>,
    line: Vec<u8>,
    last_line: Vec<u8>,
    line_too_long: bool,
    last_too_long: bool,
}

impl Tail {
    /// Feeds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > 2 * TAIL_BYTES {
            self.buf.drain(..self.buf.len() - TAIL_BYTES);
        }
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match part.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (part, false),
            };
            if self.line.len() + body.len() > MAX_LINE {
                self.line_too_long = true;
            } else {
                self.line.extend_from_slice(body);
            }
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        if !self.line.iter().all(u8::is_ascii_whitespace) || self.line_too_long {
            self.last_line = std::mem::take(&mut self.line);
            self.last_too_long = self.line_too_long;
        }
        self.line.clear();
        self.line_too_long = false;
    }

    /// Call at end of stream: a final line without a newline counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() || self.line_too_long {
            self.end_line();
        }
    }

    /// The last [`TAIL_BYTES`] bytes, lossily decoded, starting at a character boundary.
    pub fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        let s = String::from_utf8_lossy(&self.buf[start..]);
        s.trim_start_matches('\u{FFFD}').to_owned()
    }

    /// The last non-blank line (without its newline), unless it was longer than 1 MiB.
    pub fn last_line(&self) -> Option<String> {
        (!self.last_too_long && !self.last_line.is_empty())
            .then(|| String::from_utf8_lossy(&self.last_line).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_line_across_chunks() {
        let mut t = Tail::default();
        t.push(b"progress 1\nprogress 2\n{\"a\":");
        t.push(b" 1}\n\n  \n");
        t.finish();
        assert_eq!(t.last_line().as_deref(), Some("{\"a\": 1}"), "blank lines do not count");
        let mut t = Tail::default();
        t.push(b"one\ntwo");
        t.finish();
        assert_eq!(t.last_line().as_deref(), Some("two"), "an unterminated last line counts");
    }

    #[test]
    fn keeps_only_the_last_bytes() {
        let mut t = Tail::default();
        for i in 0..5000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let text = t.text();
        assert!(text.len() <= TAIL_BYTES);
        assert!(text.ends_with("line 4999\n"));
        assert_eq!(t.last_line().as_deref(), Some("line 4999"));
    }
}
