//! The end of a stream: its last [`TAIL_BYTES`] bytes, secrets hidden, and its last complete
//! line.

use rewind_model::redact_text;

/// How much of stdout and stderr is kept.
pub const TAIL_BYTES: usize = 4096;

/// Longest last line kept whole (for JSON output).
const MAX_LINE: usize = 1 << 20;

/// The tail of a stream, fed chunk by chunk.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    buf: Vec<u8>,
    /// Whether bytes before `buf` were dropped (its first line is then a fragment).
    cut: bool,
    line: Vec<u8>,
    last_line: Vec<u8>,
    line_too_long: bool,
    last_too_long: bool,
}

impl Tail {
    /// Feeds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > 4 * TAIL_BYTES {
            self.buf.drain(..self.buf.len() - 2 * TAIL_BYTES);
            self.cut = true;
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

    /// The last [`TAIL_BYTES`] bytes, lossily decoded, starting at a character boundary, with
    /// secrets hidden ([`redact_text`]). Redaction reads whole lines, before the cut: a URL cut
    /// in the middle would no longer look like one and keep its password. Of a stream longer
    /// than the buffer, the first (cut) line is dropped for the same reason.
    pub fn text(&self) -> String {
        let mut window = &self.buf[..];
        if self.cut {
            let skip = window
                .iter()
                .position(|b| *b == b'\n')
                .or_else(|| window.iter().position(u8::is_ascii_whitespace))
                .map_or(window.len(), |i| i + 1);
            window = &window[skip..];
        }
        let text = redact_text(&String::from_utf8_lossy(window));
        let mut start = text.len().saturating_sub(TAIL_BYTES);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].trim_start_matches('\u{FFFD}').to_owned()
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

    /// A password is hidden wherever the cut falls: before the URL, inside it, after it.
    #[test]
    fn a_secret_is_hidden_wherever_the_cut_falls() {
        let url = "postgres://rewind:hunter2@db.internal/tracker";
        for pad in 0..TAIL_BYTES + 64 {
            let mut t = Tail::default();
            t.push("x".repeat(pad).as_bytes());
            t.push(format!("\ncannot connect to {url}: refused\n").as_bytes());
            t.push("y".repeat(TAIL_BYTES - 40).as_bytes());
            t.finish();
            let text = t.text();
            assert!(!text.contains("hunter"), "pad {pad}: {text}");
            assert!(text.len() <= TAIL_BYTES, "pad {pad}");
        }
        // A stream much longer than the buffer, the URL on a line cut by the buffer's start.
        let mut t = Tail::default();
        t.push(format!("{url} ").as_bytes());
        for _ in 0..5 * TAIL_BYTES / 8 {
            t.push(b"abcdefgh");
        }
        let mut long = "z".repeat(3 * TAIL_BYTES);
        long.push_str(&format!(" {url}\n{url}\nlast\n"));
        t.push(long.as_bytes());
        assert!(!t.text().contains("hunter"), "{}", t.text());
        assert_eq!(
            t.text(),
            "postgres://rewind:***@db.internal/tracker\nlast\n",
            "the cut line is dropped, the whole ones kept"
        );
    }

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
