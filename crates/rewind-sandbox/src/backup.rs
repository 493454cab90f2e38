//! Point-in-time backups: per store, periodic full snapshots and a change journal of every write.
//!
//! Journal: `backup/<store>/journal/<first-seq>.jsonl`, one segment per snapshot interval, one
//! line per write:
//! `{"seq":7,"ts":"2022-04-05T07:30:12Z","op":"put","table":"issues","site":"…","id":"…","row":[…],"h":"…"}`
//! (`op` is `put` with the whole new row, or `del` without `row`). `h` chains every line to the
//! one before: the first 16 hex digits of SHA-256(previous `h` ++ the line without `h`), so an
//! edited, reordered or dropped line breaks the chain. The chain starts at [`genesis`].
//!
//! Snapshot: `backup/<store>/snapshots/<instant>.jsonl`: a header
//! `{"snapshot":"<store>","at":…,"seq":…,"chain":…}` (the journal position it includes), one
//! line per row `{"t":"<table>","r":[…]}`, and a footer `{"end":{"rows":N,"sha256":"…"}}` over
//! every byte before it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::hex;
use crate::error::{Error, IoContext, Result, line_error, open_own};
use crate::schema::{ColType, StoreKind, Table};
use crate::time::SimTime;
use crate::value::{Row, Val};

/// The chain hash before a store's first journal entry.
pub fn genesis(store: &str) -> String {
    chain_next("", format!("rewind-sandbox journal {store}").as_bytes())
}

fn chain_next(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    let mut s = hex(&h.finalize());
    s.truncate(16);
    s
}

/// A journal operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert or replace the row with this id.
    Put,
    /// Delete the row with this id.
    Del,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    seq: u64,
    ts: SimTime,
    op: Op,
    table: &'a str,
    site: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<&'a Row>,
}

/// One journal entry as read back.
#[derive(Debug, Deserialize)]
pub struct Entry {
    /// Position in the store's journal (1, 2, ...).
    pub seq: u64,
    /// When the write happened.
    pub ts: SimTime,
    /// Put or delete.
    pub op: Op,
    /// Table name.
    pub table: String,
    /// The row's tenant.
    pub site: String,
    /// The row's primary key.
    pub id: String,
    /// The new row, for a put.
    pub row: Option<Row>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:012}.jsonl")
}

/// Appends to a store's journal.
pub(crate) struct JournalWriter {
    dir: PathBuf,
    file: Option<(PathBuf, BufWriter<File>)>,
    pub seq: u64,
    pub chain: String,
}

impl JournalWriter {
    /// A writer continuing after `seq` with chain hash `chain`; the next write starts a new
    /// segment.
    pub(crate) fn new(store_backup_dir: &Path, seq: u64, chain: String) -> Result<Self> {
        let dir = store_backup_dir.join("journal");
        std::fs::create_dir_all(&dir).at(&dir)?;
        Ok(Self { dir, file: None, seq, chain })
    }

    /// Appends one entry.
    pub(crate) fn append(
        &mut self,
        ts: SimTime,
        op: Op,
        table: &str,
        site: &str,
        id: &str,
        row: Option<&Row>,
    ) -> Result<()> {
        let seq = self.seq + 1;
        if self.file.is_none() {
            let path = self.dir.join(segment_name(seq));
            let f = File::options().create(true).append(true).open(&path).at(&path)?;
            self.file = Some((path, BufWriter::with_capacity(1 << 16, f)));
        }
        let body = BodyOut { seq, ts, op, table, site, id, row };
        let mut line = serde_json::to_string(&body)
            .map_err(|e| Error::Io { path: self.dir.clone(), source: std::io::Error::other(e) })?;
        let chain = chain_next(&self.chain, line.as_bytes());
        line.pop();
        line.push_str(",\"h\":\"");
        line.push_str(&chain);
        line.push_str("\"}\n");
        if let Some((path, w)) = &mut self.file {
            w.write_all(line.as_bytes()).at(path)?;
        }
        self.seq = seq;
        self.chain = chain;
        Ok(())
    }

    /// Flushes and closes the current segment: the next write starts a new one.
    pub(crate) fn rotate(&mut self) -> Result<()> {
        if let Some((path, mut w)) = self.file.take() {
            w.flush().at(&path)?;
        }
        Ok(())
    }
}

/// Where a replay stopped.
#[derive(Debug)]
pub struct ReplayEnd {
    /// Sequence number of the last entry applied.
    pub seq: u64,
    /// Time of the last entry applied.
    pub last_ts: Option<SimTime>,
    /// Entries applied.
    pub applied: u64,
}

/// Splits a journal line into the hashed body and its `h`.
fn split_chain(line: &str) -> Option<(String, &str)> {
    let idx = line.rfind(",\"h\":\"")?;
    let h = line.get(idx + 6..line.len().checked_sub(2)?)?;
    if !line.ends_with("\"}") || h.len() != 16 {
        return None;
    }
    let mut body = line[..idx].to_owned();
    body.push('}');
    Some((body, h))
}

/// True when `row` has `table`'s columns, each of its type.
pub(crate) fn row_fits(table: &Table, row: &[Val]) -> bool {
    row.len() == table.columns.len()
        && table.columns.iter().zip(row).all(|((_, ty), v)| match ty {
            ColType::Text => v.as_text().is_some(),
            ColType::Int => v.as_int().is_some(),
        })
}

/// Replays a store's journal from the entry after `after_seq` (whose chain hash is `chain`)
/// through every entry stamped at or before `until`, checking the chain, the sequence and the
/// order of time. `last_seq` is the store's last sequence number (from the manifest): a journal
/// that ends before it while `until` is not yet reached is truncated. `apply` refuses an entry
/// with what is wrong with it; the error names the segment and line.
pub(crate) fn replay(
    store_backup_dir: &Path,
    after_seq: u64,
    chain: &str,
    until: SimTime,
    last_seq: u64,
    mut apply: impl FnMut(Entry) -> std::result::Result<(), String>,
) -> Result<ReplayEnd> {
    let dir = store_backup_dir.join("journal");
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    if dir.is_dir() {
        for e in std::fs::read_dir(&dir).at(&dir)? {
            let path = e.at(&dir)?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok());
            match first {
                Some(first) => segments.push((first, path)),
                None => {
                    return Err(Error::corrupt(&path, None, "not a journal segment name"));
                }
            }
        }
    }
    segments.sort();
    let next = after_seq.saturating_add(1);
    let start = segments.iter().rposition(|(first, _)| *first <= next).unwrap_or(0);
    let mut end = ReplayEnd { seq: after_seq, last_ts: None, applied: 0 };
    let mut chain = chain.to_owned();
    let mut prev_ts: Option<SimTime> = None;
    for (_, path) in segments.iter().skip(start) {
        let f = File::open(path).at(path)?;
        for (n, line) in BufReader::with_capacity(1 << 16, f).lines().enumerate() {
            let lineno = Some(n as u64 + 1);
            let line = line.map_err(|e| line_error(path, n as u64 + 1, e))?;
            let (body, h) = split_chain(&line)
                .ok_or_else(|| Error::corrupt(path, lineno, "journal line without a chain hash"))?;
            let entry: Entry = serde_json::from_str(&body).map_err(|e| {
                Error::corrupt(path, lineno, format!("unreadable journal entry: {e}"))
            })?;
            if entry.seq <= after_seq {
                continue;
            }
            if entry.seq != end.seq.saturating_add(1) {
                return Err(Error::corrupt(
                    path,
                    lineno,
                    format!(
                        "journal entry {} follows entry {}: entries are missing",
                        entry.seq, end.seq
                    ),
                ));
            }
            let expect = chain_next(&chain, body.as_bytes());
            if expect != h {
                return Err(Error::corrupt(
                    path,
                    lineno,
                    format!(
                        "journal entry {} fails its chain hash (found {h}, expected {expect}): \
                         the entry or one before it was altered",
                        entry.seq
                    ),
                ));
            }
            if prev_ts.is_some_and(|p| entry.ts < p) {
                return Err(Error::corrupt(
                    path,
                    lineno,
                    format!("journal entry {} goes back in time to {}", entry.seq, entry.ts),
                ));
            }
            if entry.ts > until {
                return Ok(end);
            }
            prev_ts = Some(entry.ts);
            chain = expect;
            end.seq = entry.seq;
            end.last_ts = Some(entry.ts);
            end.applied += 1;
            let seq = entry.seq;
            apply(entry).map_err(|msg| {
                Error::corrupt(path, lineno, format!("journal entry {seq}: {msg}"))
            })?;
        }
    }
    if end.seq < last_seq {
        return Err(Error::corrupt(
            &dir,
            None,
            format!(
                "journal ends at entry {} but the store's last write is entry {last_seq}: the \
                 journal is truncated",
                end.seq
            ),
        ));
    }
    Ok(end)
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    snapshot: String,
    at: SimTime,
    seq: u64,
    chain: String,
}

#[derive(Serialize, Deserialize)]
struct SnapshotRow {
    t: String,
    r: Row,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEnd {
    rows: u64,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFooter {
    end: SnapshotEnd,
}

/// Writes a full snapshot of a store (atomically: temporary file, then rename).
pub(crate) fn write_snapshot(
    path: &Path,
    store: &str,
    at: SimTime,
    seq: u64,
    chain: &str,
    tables: &[(&Table, Vec<Row>)],
) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let io =
        |e: serde_json::Error| Error::Io { path: tmp.clone(), source: std::io::Error::other(e) };
    let f = File::create(&tmp).at(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 16, f);
    let mut sha = Sha256::new();
    let mut rows = 0u64;
    let header = SnapshotHeader { snapshot: store.to_owned(), at, seq, chain: chain.to_owned() };
    let mut line = serde_json::to_string(&header).map_err(io)?;
    line.push('\n');
    sha.update(line.as_bytes());
    w.write_all(line.as_bytes()).at(&tmp)?;
    for (table, table_rows) in tables {
        for r in table_rows {
            #[derive(Serialize)]
            struct RowOut<'a> {
                t: &'a str,
                r: &'a Row,
            }
            let mut line = serde_json::to_string(&RowOut { t: table.name, r }).map_err(io)?;
            line.push('\n');
            sha.update(line.as_bytes());
            w.write_all(line.as_bytes()).at(&tmp)?;
            rows += 1;
        }
    }
    let footer = SnapshotFooter { end: SnapshotEnd { rows, sha256: hex(&sha.finalize()) } };
    let mut line = serde_json::to_string(&footer).map_err(io)?;
    line.push('\n');
    w.write_all(line.as_bytes()).at(&tmp)?;
    w.flush().at(&tmp)?;
    drop(w);
    std::fs::rename(&tmp, path).at(path)
}

/// A snapshot read back: rows per table (by table index), and the journal position.
pub(crate) struct Snapshot {
    pub at: SimTime,
    pub seq: u64,
    pub chain: String,
    pub tables: Vec<Vec<Row>>,
    pub rows: u64,
}

/// Reads and checks a snapshot of a store of `kind`.
pub(crate) fn read_snapshot(path: &Path, store: &str, kind: StoreKind) -> Result<Snapshot> {
    let f = open_own(path, "the snapshot listed in sandbox.json")?;
    let mut lines = BufReader::with_capacity(1 << 16, f).lines();
    let mut sha = Sha256::new();
    let mut n = 0u64;
    let mut next = |sha: &mut Sha256| -> Result<Option<String>> {
        n += 1;
        match lines.next() {
            None => Ok(None),
            Some(l) => {
                let l = l.map_err(|e| line_error(path, n, e))?;
                sha.update(l.as_bytes());
                sha.update(b"\n");
                Ok(Some(l))
            }
        }
    };
    let first = next(&mut sha)?.ok_or_else(|| Error::corrupt(path, Some(1), "empty snapshot"))?;
    let header: SnapshotHeader = serde_json::from_str(&first)
        .map_err(|e| Error::corrupt(path, Some(1), format!("bad snapshot header: {e}")))?;
    if header.snapshot != store {
        return Err(Error::corrupt(
            path,
            Some(1),
            format!("snapshot of `{}`, expected `{store}`", header.snapshot),
        ));
    }
    let mut tables: Vec<Vec<Row>> = kind.tables().iter().map(|_| Vec::new()).collect();
    let mut rows = 0u64;
    let mut lineno = 1u64;
    loop {
        let before = sha.clone();
        let Some(line) = next(&mut sha)? else {
            return Err(Error::corrupt(path, None, "snapshot ends without its footer: truncated"));
        };
        lineno += 1;
        if line.starts_with("{\"end\"") {
            let footer: SnapshotFooter = serde_json::from_str(&line)
                .map_err(|e| Error::corrupt(path, Some(lineno), format!("bad footer: {e}")))?;
            let digest = hex(&before.finalize());
            if footer.end.sha256 != digest || footer.end.rows != rows {
                return Err(Error::corrupt(
                    path,
                    Some(lineno),
                    format!(
                        "snapshot checksum mismatch ({rows} rows read, footer says {}): the file \
                         was altered",
                        footer.end.rows
                    ),
                ));
            }
            break;
        }
        let row: SnapshotRow = serde_json::from_str(&line)
            .map_err(|e| Error::corrupt(path, Some(lineno), format!("bad snapshot row: {e}")))?;
        let Some(t) = kind.table_index(&row.t) else {
            return Err(Error::corrupt(path, Some(lineno), format!("unknown table `{}`", row.t)));
        };
        if !row_fits(&kind.tables()[t], &row.r) {
            return Err(Error::corrupt(
                path,
                Some(lineno),
                format!("row does not have the columns of `{}`", row.t),
            ));
        }
        tables[t].push(row.r);
        rows += 1;
    }
    Ok(Snapshot { at: header.at, seq: header.seq, chain: header.chain, tables, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Val;

    fn t(s: &str) -> SimTime {
        SimTime::parse(s).unwrap()
    }

    #[test]
    fn journal_replays_until_an_instant_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let g = genesis("flags");
        let mut w = JournalWriter::new(dir.path(), 0, g.clone()).unwrap();
        let row =
            vec![Val::from("f1"), Val::from("s1"), Val::from("dark"), Val::Int(1), Val::from("x")];
        w.append(t("2022-04-05T07:00:00Z"), Op::Put, "flags", "s1", "f1", Some(&row)).unwrap();
        w.append(t("2022-04-05T07:10:00Z"), Op::Del, "flags", "s1", "f1", None).unwrap();
        w.rotate().unwrap();
        let mut seen = Vec::new();
        let end = replay(dir.path(), 0, &g, t("2022-04-05T07:05:00Z"), 2, |e| {
            seen.push(e.seq);
            Ok::<_, String>(())
        })
        .unwrap();
        assert_eq!((end.seq, end.applied, seen), (1, 1, vec![1]));

        let seg = dir.path().join("journal").join(segment_name(1));
        let text = std::fs::read_to_string(&seg).unwrap().replace("\"dark\"", "\"light\"");
        std::fs::write(&seg, text).unwrap();
        let err = replay(dir.path(), 0, &g, t("2022-04-05T08:00:00Z"), 2, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains(":1: journal entry 1 fails its chain hash"), "{err}");
        assert!(err.is_refusal());
    }

    #[test]
    fn truncated_journal_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let g = genesis("flags");
        let mut w = JournalWriter::new(dir.path(), 0, g.clone()).unwrap();
        w.append(t("2022-04-05T07:00:00Z"), Op::Del, "flags", "s1", "f1", None).unwrap();
        w.rotate().unwrap();
        let err = replay(dir.path(), 0, &g, t("2022-04-05T08:00:00Z"), 5, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn snapshot_round_trips_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let table = &StoreKind::Flags.tables()[0];
        let rows = vec![vec![
            Val::from("f1"),
            Val::from("s1"),
            Val::from("dark"),
            Val::Int(1),
            Val::from("x"),
        ]];
        write_snapshot(
            &path,
            "flags",
            t("2022-04-05T00:00:00Z"),
            9,
            "abc",
            &[(table, rows.clone())],
        )
        .unwrap();
        let s = read_snapshot(&path, "flags", StoreKind::Flags).unwrap();
        assert_eq!((s.seq, s.rows, &s.tables[0]), (9, 1, &rows));
        let text = std::fs::read_to_string(&path).unwrap().replace("dark", "lite");
        std::fs::write(&path, text).unwrap();
        let err = read_snapshot(&path, "flags", StoreKind::Flags).err().unwrap();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        // A well-formed file whose row does not fit its table: text in an integer column.
        let mut wrong = rows[0].clone();
        wrong[3] = Val::from("1");
        write_snapshot(
            &path,
            "flags",
            t("2022-04-05T00:00:00Z"),
            9,
            "abc",
            &[(table, vec![wrong])],
        )
        .unwrap();
        let err = read_snapshot(&path, "flags", StoreKind::Flags).err().unwrap();
        assert!(err.to_string().contains(":2: row does not have the columns of `flags`"), "{err}");
    }
}
