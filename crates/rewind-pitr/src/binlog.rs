//! MariaDB binlog files, read in Rust: event headers and the commit points of transaction
//! groups, no more.
//!
//! A binlog file is the magic `\xfe bin` and then events, each behind a v4 header: timestamp
//! u32, type u8, server_id u32, event_size u32 (checksum included), log_pos u32 (the position
//! just after the event), flags u16, all little-endian. A transaction group (MariaDB: a GTID
//! event, type 162) ends at an XID event, or at a QUERY event `COMMIT` (non-transactional
//! changes); a *standalone* group (DDL, flag `FL_STANDALONE` in the GTID event) ends at its
//! query (plain or compressed). The end of that event is where a replay can stop without
//! splitting a transaction, and its timestamp (whole seconds) is the group's commit time as the
//! binlog knows it.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The four bytes every binlog file starts with.
pub(crate) const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
const HEADER: usize = 19;

const QUERY: u8 = 2;
const STOP: u8 = 3;
const ROTATE: u8 = 4;
const FORMAT_DESCRIPTION: u8 = 15;
const XID: u8 = 16;
const GTID: u8 = 162;
const QUERY_COMPRESSED: u8 = 165;
const FL_STANDALONE: u8 = 1;

/// Where a transaction group ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The position of its ending event (XID, COMMIT or the standalone query).
    pub at: u64,
    /// The position just after it: where a replay stops.
    pub end: u64,
    /// Its timestamp, seconds since the epoch.
    pub time: u32,
}

/// One binlog file, read.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    /// The file.
    pub path: PathBuf,
    /// Bytes of whole events (a half-written event at the end of an active file is left out).
    pub len: u64,
    /// The group ends, in file order.
    pub commits: Vec<Commit>,
    /// The first event with a timestamp (not 0), written when the file was begun: its position
    /// and time. Every commit of the files before it is stamped at or before it.
    pub first_event: Option<(u64, u32)>,
    /// The last event with a timestamp (not 0): its position and time.
    pub last_event: Option<(u64, u32)>,
    /// The file ends with a ROTATE or STOP event (a closed file, not the active one).
    pub closed: bool,
}

/// Why a binlog file could not be read.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(std::io::Error),
    Bad(String),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Bad(s) => f.write_str(s),
        }
    }
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads `path`'s event headers (and the bodies of the few events that decide group ends).
pub(crate) fn scan(path: &Path) -> Result<Scan, ScanError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 4];
    if size < 4 {
        return Err(ScanError::Bad("shorter than the binlog magic".into()));
    }
    r.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(ScanError::Bad(format!(
            "not a binlog file (starts with {magic:02x?}, not fe 62 69 6e)"
        )));
    }
    let mut out = Scan {
        path: path.to_path_buf(),
        len: 4,
        commits: Vec::new(),
        first_event: None,
        last_event: None,
        closed: false,
    };
    let mut checksum = 4u64; // CRC32, MariaDB's default; the format description event says
    let mut query_post_header = 13usize;
    // Group state: None outside a group, Some(standalone) inside one.
    let mut group: Option<bool> = None;
    let mut pos = 4u64;
    let mut body = Vec::new();
    loop {
        if size - pos < HEADER as u64 {
            break; // the end, or a half-written header of an active file
        }
        let mut h = [0u8; HEADER];
        r.read_exact(&mut h)?;
        let time = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let kind = h[4];
        let event_size = u64::from(u32::from_le_bytes([h[9], h[10], h[11], h[12]]));
        if event_size < HEADER as u64 {
            return Err(ScanError::Bad(format!(
                "event at {pos}: size {event_size} is smaller than its header"
            )));
        }
        if size - pos < event_size {
            break; // a half-written event at the end of an active file
        }
        let body_len = (event_size - HEADER as u64) as usize;
        let end = pos + event_size;
        let wanted = matches!(kind, QUERY | XID | GTID | FORMAT_DESCRIPTION);
        if wanted {
            body.resize(body_len, 0);
            r.read_exact(&mut body)?;
        } else {
            r.seek_relative(body_len as i64)?;
        }
        if time != 0 {
            out.first_event.get_or_insert((pos, time));
            out.last_event = Some((pos, time));
        }
        out.closed = matches!(kind, ROTATE | STOP);
        let mut commit = false;
        match kind {
            // binlog_version u16, server_version [50], create_timestamp u32, header_length u8,
            // post-header lengths (one per event type), checksum algorithm u8, checksum.
            FORMAT_DESCRIPTION if body.len() >= 57 + usize::from(QUERY) + 5 => {
                query_post_header = usize::from(body[57 + usize::from(QUERY) - 1]);
                let alg = body[body.len() - 5];
                checksum = if alg == 0 { 0 } else { 4 };
            }
            GTID => {
                // seq_no u64, domain_id u32, flags2 u8.
                let standalone = body.get(12).is_some_and(|f| f & FL_STANDALONE != 0);
                group = Some(standalone);
            }
            XID => {
                commit = true;
            }
            QUERY => {
                let text = query_text(&body, query_post_header, checksum as usize);
                let verb = text.map(first_word).unwrap_or_default();
                match (group, verb.as_str()) {
                    (_, "BEGIN") => group = Some(false),
                    (Some(false), "COMMIT" | "ROLLBACK") => commit = true,
                    (Some(false), _) => {} // a statement inside a transaction
                    (Some(true) | None, _) => commit = true, // DDL, or a statement of its own
                }
            }
            // A compressed statement (`log_bin_compress`): its text is not read; it ends a
            // standalone group (DDL) or stands alone, as a plain one would.
            QUERY_COMPRESSED => commit = group != Some(false),
            _ => {}
        }
        if commit {
            out.commits.push(Commit { at: pos, end, time });
            group = None;
        }
        pos = end;
        out.len = end;
    }
    Ok(out)
}

/// A QUERY event's statement: after the post-header (thread_id u32, exec_time u32, db_len u8,
/// error_code u16, status_vars_len u16), the status variables and the NUL-ended database name.
fn query_text(body: &[u8], post_header: usize, checksum: usize) -> Option<&[u8]> {
    if body.len() < post_header.max(13) + checksum {
        return None;
    }
    let db_len = usize::from(body[8]);
    let vars = usize::from(u16::from_le_bytes([body[11], body[12]]));
    let start = post_header + vars + db_len + 1;
    body.get(start..body.len() - checksum)
}

fn first_word(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(text);
    s.trim_start()
        .split(|c: char| c.is_whitespace() || c == ';' || c == '/')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The binlog files of `dir` named `<base>.<digits>`, by number.
pub(crate) fn files(dir: &Path, base: &str) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let prefix = format!("{base}.");
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix(&prefix) else { continue };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = num.parse::<u64>() {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// `binlog.000007` as (`binlog`, 7).
pub(crate) fn split_name(name: &str) -> Option<(&str, u64)> {
    let (base, num) = name.rsplit_once('.')?;
    if base.is_empty() || num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, num.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: u32, kind: u8, body: &[u8], pos: &mut u32) -> Vec<u8> {
        let size = (HEADER + body.len() + 4) as u32;
        *pos += size;
        let mut v = Vec::new();
        v.extend_from_slice(&time.to_le_bytes());
        v.push(kind);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&pos.to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(body);
        v.extend_from_slice(&[0, 0, 0, 0]); // CRC32
        v
    }

    fn query(text: &str) -> Vec<u8> {
        let mut b = vec![0u8; 13];
        b[8] = 1; // db_len
        b.push(b'd');
        b.push(0);
        b.extend_from_slice(text.as_bytes());
        b
    }

    fn gtid(standalone: bool) -> Vec<u8> {
        let mut b = vec![0u8; 13];
        b[12] = u8::from(standalone);
        b.extend_from_slice(&[0; 6]);
        b
    }

    #[test]
    fn group_ends_and_half_written_tail() {
        let mut pos = 4u32;
        let mut f = MAGIC.to_vec();
        let mut fde = vec![0u8; 57];
        fde.extend_from_slice(&[0, 13, 0, 0]); // post-header lengths (QUERY's is the 2nd)
        fde.push(1); // CRC32 (its 4 bytes are the event's own checksum)
        f.extend(event(100, FORMAT_DESCRIPTION, &fde, &mut pos));
        f.extend(event(101, GTID, &gtid(true), &mut pos));
        let ddl_at = u64::from(pos);
        f.extend(event(101, QUERY, &query("create table t (a int)"), &mut pos));
        let ddl_end = u64::from(pos);
        f.extend(event(102, GTID, &gtid(false), &mut pos));
        f.extend(event(102, QUERY, &query("BEGIN"), &mut pos));
        f.extend(event(102, QUERY, &query("insert into t values (1)"), &mut pos));
        let commit_at = u64::from(pos);
        f.extend(event(103, QUERY, &query("COMMIT"), &mut pos));
        let commit_end = u64::from(pos);
        f.extend(event(104, GTID, &gtid(false), &mut pos));
        f.extend(event(104, 23, &[1, 2, 3], &mut pos));
        let xid_at = u64::from(pos);
        f.extend(event(105, XID, &[9, 0, 0, 0, 0, 0, 0, 0], &mut pos));
        let whole = f.len() as u64;
        let half = event(106, GTID, &gtid(false), &mut pos);
        f.extend(&half[..10]);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("binlog.000001");
        std::fs::write(&p, &f).expect("write");
        let s = scan(&p).expect("scan");
        assert_eq!(s.len, whole);
        assert_eq!(
            s.commits,
            vec![
                Commit { at: ddl_at, end: ddl_end, time: 101 },
                Commit { at: commit_at, end: commit_end, time: 103 },
                Commit { at: xid_at, end: whole, time: 105 },
            ]
        );
        assert_eq!(s.first_event, Some((4, 100)));
        assert_eq!(s.last_event, Some((xid_at, 105)));
        assert!(!s.closed);
    }

    #[test]
    fn refuses_what_is_not_a_binlog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("binlog.000001");
        std::fs::write(&p, b"hello world, not a binlog").expect("write");
        let e = scan(&p).expect_err("not a binlog");
        assert!(e.to_string().contains("not a binlog file"), "{e}");
    }

    #[test]
    fn names() {
        assert_eq!(split_name("binlog.000007"), Some(("binlog", 7)));
        assert_eq!(split_name("my.bin.log.000012"), Some(("my.bin.log", 12)));
        assert_eq!(split_name("binlog.index"), None);
    }
}
