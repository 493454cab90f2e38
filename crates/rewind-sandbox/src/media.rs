//! The media object store on disk: `objects/<site_id>/<object_id>.json` holds an object's
//! current version (a row of the `objects` table, as a JSON object keyed by column), and
//! `blobs/<aa>/<sha256>` the content of that version, content-addressed. The same layout is what
//! point-in-time restore writes to `--out` for the `media` store.
//!
//! Used by the writer and by restore; the verifier reads media with its own code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::manifest::blob_rel;
use crate::schema::{ColType, StoreKind};
use crate::value::{Row, Val};

/// A media directory (live store or scratch copy).
#[derive(Clone, Debug)]
pub(crate) struct MediaDir {
    pub root: PathBuf,
}

/// Column index of `sha256` in `objects`.
pub(crate) const SHA_COL: usize = 5;
/// Column index of `size` in `objects`.
pub(crate) const SIZE_COL: usize = 6;

fn text(row: &Row, i: usize) -> &str {
    row.get(i).and_then(Val::as_text).unwrap_or("")
}

impl MediaDir {
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    pub(crate) fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub(crate) fn blob(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(blob_rel(sha))
    }

    fn object(&self, site: &str, id: &str) -> PathBuf {
        self.objects().join(site).join(format!("{id}.json"))
    }

    /// Creates the directories.
    pub(crate) fn create(&self) -> Result<()> {
        for d in [self.objects(), self.root.join("blobs")] {
            std::fs::create_dir_all(&d).at(&d)?;
        }
        Ok(())
    }

    /// Writes an object's current version.
    pub(crate) fn put(&self, row: &Row) -> Result<()> {
        let path = self.object(text(row, 1), text(row, 0));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::write(&path, object_json(row)).at(&path)
    }

    /// Removes an object (and its site's directory once empty).
    pub(crate) fn delete(&self, site: &str, id: &str) -> Result<()> {
        let path = self.object(site, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { path, source: e }),
        }
        let dir = self.objects().join(site);
        if std::fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(false) {
            std::fs::remove_dir(&dir).at(&dir)?;
        }
        Ok(())
    }

    /// Stores a blob unless present.
    pub(crate) fn put_blob(&self, sha: &str, content: &[u8]) -> Result<()> {
        let path = self.blob(sha);
        if path.exists() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::write(&path, content).at(&path)
    }

    /// Removes a blob no object references any more.
    pub(crate) fn remove_blob(&self, sha: &str) -> Result<()> {
        let path = self.blob(sha);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    /// Every object row, sorted by id.
    pub(crate) fn read_all(&self) -> Result<Vec<Row>> {
        let mut out = Vec::new();
        let objects = self.objects();
        if !objects.is_dir() {
            return Ok(out);
        }
        for site in std::fs::read_dir(&objects).at(&objects)? {
            let site = site.at(&objects)?.path();
            for obj in std::fs::read_dir(&site).at(&site)? {
                let path = obj.at(&site)?.path();
                let text = std::fs::read_to_string(&path).at(&path)?;
                out.push(parse_object(&path, &text)?);
            }
        }
        out.sort_by(|a, b| a[0].cmp(&b[0]));
        Ok(out)
    }

    /// One site's object files, by file name: their bytes as stored (an absent site directory
    /// has none).
    pub(crate) fn site_files(&self, site: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let dir = self.objects().join(site);
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::Io { path: dir, source: e }),
        };
        for entry in entries {
            let path = entry.at(&dir)?.path();
            let name =
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.insert(name, std::fs::read(&path).at(&path)?);
        }
        Ok(out)
    }
}

/// An object file's content: the row as a JSON object keyed by column.
pub(crate) fn object_json(row: &Row) -> String {
    let table = &StoreKind::Media.tables()[0];
    let mut obj = Map::new();
    for ((name, _), v) in table.columns.iter().zip(row) {
        obj.insert((*name).to_owned(), serde_json::to_value(v).unwrap_or(Value::Null));
    }
    Value::Object(obj).to_string()
}

/// An object file's row, in the column order of `objects`.
pub(crate) fn parse_object(path: &Path, text: &str) -> Result<Row> {
    let table = &StoreKind::Media.tables()[0];
    let value: Map<String, Value> = serde_json::from_str(text)
        .map_err(|e| Error::corrupt(path, None, format!("not a media object: {e}")))?;
    let mut row = Vec::with_capacity(table.columns.len());
    for (name, ty) in table.columns {
        let v = match (value.get(*name), ty) {
            (Some(Value::String(s)), ColType::Text) => Val::Text(s.clone()),
            (Some(Value::Number(n)), ColType::Int) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => return Err(Error::corrupt(path, None, "bad integer")),
            },
            _ => {
                return Err(Error::corrupt(path, None, format!("missing or mistyped `{name}`")));
            }
        };
        row.push(v);
    }
    Ok(row)
}
