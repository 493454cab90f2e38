//! Restoring one site's media from a scratch copy made by `pitr --scratch TAG`, and checking
//! the result. The media store is files, so there is no SQL to copy it with: these are what a
//! workflow's `command` steps run.
//!
//! [`restore_media`] is idempotent and safe to re-run after a crash at any point: blobs (content
//! addressed, never deleted) are copied first, each checked and renamed into place; the site's
//! new `objects/<site>/` is built aside in `stores/media/.staging/` and swapped in by two renames.
//! Whatever a crash leaves behind, the next run rebuilds from the scratch copy.
//!
//! [`restore_media_as`] restores a site's objects as a new site's (Restore 1): each object gets
//! the id `copy … as` gives a row of a table `objects` (uuid v5 of the new site, the table and
//! the old id: `rewind_slice::remap::new_uuid_of`) and the new site id; its content, addressed
//! by its SHA-256, is the same, so a blob is copied only when the live store lacks it (the old
//! site's were removed with it). [`check_media_as`] compares the result the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use rewind_model::{RestorePoint, TargetId};
use serde::Serialize;

use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Layout, Manifest};
use crate::media::{MediaDir, SHA_COL, SIZE_COL, object_json, parse_object};
use crate::scratch::{self, MEDIA_MARKER, META_FILE, ScratchTag, read_media_meta};
use crate::value::Val;

/// What `restore-media` did.
#[derive(Clone, Debug, Serialize)]
pub struct MediaRestoreReport {
    /// Always `media`.
    pub store: &'static str,
    /// The site restored.
    pub site: TargetId,
    /// The new site it was restored as (`--as`).
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    pub restored_as: Option<TargetId>,
    /// The instant of the scratch copy (its `rewind-meta.json`).
    pub restore_point: RestorePoint,
    /// Objects the site has now (those of the scratch copy).
    pub objects: u64,
    /// Blobs this call copied into the live store (absent before).
    pub blobs_copied: u64,
    /// Bytes of the blobs this call copied.
    pub bytes: u64,
}

/// What `check-media` found.
#[derive(Clone, Debug, Serialize)]
pub struct MediaCheckReport {
    /// Always `media`.
    pub store: &'static str,
    /// The site checked.
    pub site: TargetId,
    /// The new site checked against the site's scratch objects (`--as`).
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    pub restored_as: Option<TargetId>,
    /// Objects of the site in the scratch copy.
    pub objects: u64,
    /// True when the live objects equal the scratch's byte for byte and every blob is right.
    pub matching: bool,
    /// The instant of the scratch copy.
    pub restore_point: RestorePoint,
    /// The first differences (at most [`MAX_DIFFERENCES`]); empty when matching.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

/// Differences `check-media` names at most.
pub const MAX_DIFFERENCES: usize = 10;

/// One object of the scratch copy: its file's bytes and the content it points to.
struct Object {
    bytes: Vec<u8>,
    sha: String,
    size: u64,
}

/// The site's objects in a media scratch copy made by pitr, with the instant it holds.
struct SiteScratch {
    root: PathBuf,
    restore_point: RestorePoint,
    objects: BTreeMap<String, Object>,
}

/// Checks the site and the tag and reads the site's objects from the scratch copy: refused
/// (exit 2) for an unknown site, a missing scratch copy, or one pitr did not make.
fn open(dir: &Path, tag: &ScratchTag, site: &TargetId) -> Result<SiteScratch> {
    let m = Manifest::load(dir)?;
    if m.site(site).is_none() {
        return Err(Error::refused(format!(
            "--site {site}: no such site in sandbox `{}` (`rewind sandbox sites` lists them)",
            dir.display()
        )));
    }
    let root = scratch::media_path(dir, tag);
    if !root.is_dir() {
        let tdir = scratch::tag_dir(dir, tag);
        let what = if tdir.is_dir() {
            format!("has no media copy `{}`", root.display())
        } else {
            format!("has no scratch copies (`{}` does not exist)", tdir.display())
        };
        return Err(Error::refused(format!(
            "--scratch {tag} {what}: make it first with `rewind sandbox pitr {} --store media \
             --at TS --scratch {tag}`",
            dir.display()
        )));
    }
    if !root.join(MEDIA_MARKER).is_file() || !root.join(META_FILE).is_file() {
        return Err(Error::refused(format!(
            "--scratch {tag}: `{}` is not a media copy made by `rewind sandbox pitr --scratch` \
             (no {MEDIA_MARKER} or {META_FILE})",
            root.display()
        )));
    }
    let (meta, restore_point) = read_media_meta(&root)?;
    if meta.store != "media" {
        return Err(Error::corrupt(
            &root.join(META_FILE),
            None,
            format!("it describes a copy of `{}`, not of `media`", meta.store),
        ));
    }
    let scratch = MediaDir::new(&root);
    let site_txt = site.to_string();
    let mut objects = BTreeMap::new();
    for (name, bytes) in scratch.site_files(&site_txt)? {
        let path = scratch.objects().join(&site_txt).join(&name);
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| Error::corrupt(&path, None, "not UTF-8 text"))?;
        let row = parse_object(&path, &text)?;
        let id = row[0].as_text().unwrap_or_default();
        if row[1].as_text() != Some(site_txt.as_str()) || name != format!("{id}.json") {
            return Err(Error::corrupt(&path, None, "the object's id or site is not its file's"));
        }
        let sha = row[SHA_COL].as_text().unwrap_or_default().to_owned();
        let size = row[SIZE_COL].as_int().and_then(|s| u64::try_from(s).ok()).unwrap_or(u64::MAX);
        objects.insert(name, Object { bytes, sha, size });
    }
    Ok(SiteScratch { root, restore_point, objects })
}

impl SiteScratch {
    /// The objects as the site restored as `new` has them: new object ids (the rule of `copy …
    /// as` for a table `objects`), the new site id, the same content.
    fn into_new_site(self, new: &TargetId) -> Result<Self> {
        let new_txt = new.to_string();
        let mut objects = BTreeMap::new();
        for (name, obj) in self.objects {
            let path = self.root.join("objects").join(&name);
            let text = String::from_utf8_lossy(&obj.bytes).into_owned();
            let mut row = parse_object(&path, &text)?;
            let old = row[0].as_text().unwrap_or_default();
            let old = uuid::Uuid::parse_str(old).map_err(|_| {
                Error::corrupt(&path, None, "the object's id is not a uuid: it cannot be remapped")
            })?;
            let id = rewind_slice::remap::new_uuid_of(&new_txt, "objects", old).hyphenated();
            row[0] = Val::Text(id.to_string());
            row[1] = Val::Text(new_txt.clone());
            let bytes = object_json(&row).into_bytes();
            objects.insert(format!("{id}.json"), Object { bytes, ..obj });
        }
        Ok(Self { objects, ..self })
    }
}

/// The file's content when it is exactly the content of `sha` (`size` bytes); otherwise what is
/// wrong with it.
fn check_blob(path: &Path, sha: &str, size: u64) -> std::result::Result<Vec<u8>, String> {
    let content = match std::fs::read(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("content {sha} is missing (`{}`)", path.display()));
        }
        Err(e) => return Err(format!("content {sha} is unreadable (`{}`): {e}", path.display())),
    };
    if content.len() as u64 != size || sha256_hex(&content) != sha {
        return Err(format!(
            "content `{}` does not match its sha256 {sha} and size {size}",
            path.display()
        ));
    }
    Ok(content)
}

/// Replaces the site's live media objects with the scratch copy's and copies the blobs they
/// need (never deleting one). Refused, with nothing written, for an unknown site, a missing
/// scratch copy or one pitr did not make, or a scratch blob that does not match its hash.
pub fn restore_media(dir: &Path, tag: &ScratchTag, site: &TargetId) -> Result<MediaRestoreReport> {
    restore(dir, tag, site, None)
}

/// Restores the site's media objects from the scratch copy as the new site `new`'s
/// ([`SiteScratch::into_new_site`]), like [`restore_media`]. Refused besides when `new` is a site of
/// the sandbox or no restore as new claimed it in the catalog (restore the catalog record
/// first): only a new site a restore wrote receives media this way, so `drop-tenant` can remove
/// it again.
pub async fn restore_media_as(
    dir: &Path,
    tag: &ScratchTag,
    site: &TargetId,
    new: &TargetId,
) -> Result<MediaRestoreReport> {
    open(dir, tag, site)?;
    crate::as_new::require_claimed(dir, new, "restore-media --as").await?;
    restore(dir, tag, site, Some(new))
}

fn restore(
    dir: &Path,
    tag: &ScratchTag,
    site: &TargetId,
    new_site: Option<&TargetId>,
) -> Result<MediaRestoreReport> {
    let s = open(dir, tag, site)?;
    let scratch = MediaDir::new(&s.root);
    let s = match new_site {
        Some(n) => s.into_new_site(n)?,
        None => s,
    };
    // Every blob the site needs, checked in the scratch copy before anything is written.
    let mut needed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, obj) in &s.objects {
        if needed.contains_key(&obj.sha) {
            continue;
        }
        let path = scratch.blob(&obj.sha);
        let content = check_blob(&path, &obj.sha, obj.size)
            .map_err(|why| Error::corrupt(&path, None, format!("object {name}: {why}")))?;
        needed.insert(obj.sha.clone(), content);
    }

    let layout = Layout::new(dir);
    let live = MediaDir::new(&layout.media());
    let site_txt = new_site.unwrap_or(site).to_string();
    let staging = layout.media().join(".staging");
    std::fs::create_dir_all(&staging).at(&staging)?;
    // One restore of a site at a time (a retried step may overlap a stray earlier attempt).
    let lock_path = staging.join(format!("{site_txt}.lock"));
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path);
    let lock = lock.at(&lock_path)?;
    lock.lock().at(&lock_path)?;

    // 1. Blobs: content-addressed, so a present one is never touched; a copied one goes through
    // a temporary file, is checked, and renamed into place.
    let (mut blobs_copied, mut bytes) = (0, 0);
    for (sha, content) in &needed {
        let dest = live.blob(sha);
        if dest.exists() {
            let size = content.len() as u64;
            check_blob(&dest, sha, size).map_err(|why| Error::Io {
                path: dest.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the live media store is damaged: {why}"),
                ),
            })?;
            continue;
        }
        let tmp = staging.join(format!("{site_txt}.blob"));
        std::fs::write(&tmp, content).at(&tmp)?;
        check_blob(&tmp, sha, content.len() as u64).map_err(|why| Error::Io {
            path: tmp.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        })?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::rename(&tmp, &dest).at(&dest)?;
        blobs_copied += 1;
        bytes += content.len() as u64;
    }

    // 2. Objects: build the new folder aside, move the old one out, move the new one in.
    let new = staging.join(format!("{site_txt}.new"));
    let old = staging.join(format!("{site_txt}.old"));
    for p in [&new, &old] {
        if p.exists() {
            std::fs::remove_dir_all(p).at(p)?;
        }
    }
    if !s.objects.is_empty() {
        std::fs::create_dir(&new).at(&new)?;
        for (name, obj) in &s.objects {
            let p = new.join(name);
            std::fs::write(&p, &obj.bytes).at(&p)?;
        }
    }
    let current = live.objects().join(&site_txt);
    if current.exists() {
        std::fs::rename(&current, &old).at(&current)?;
    }
    if !s.objects.is_empty() {
        std::fs::rename(&new, &current).at(&current)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    let _ = lock.unlock();
    Ok(MediaRestoreReport {
        store: "media",
        site: *site,
        restored_as: new_site.copied(),
        restore_point: s.restore_point,
        objects: s.objects.len() as u64,
        blobs_copied,
        bytes,
    })
}

/// Compares the site's live media objects with the scratch copy's: the same object files byte
/// for byte, and every blob present with the right SHA-256 and size. Refused like
/// [`restore_media`]; writes nothing.
pub fn check_media(dir: &Path, tag: &ScratchTag, site: &TargetId) -> Result<MediaCheckReport> {
    check(dir, tag, site, None)
}

/// Compares the new site `new`'s live media objects with the site's in the scratch copy as a
/// restore as new writes them (new ids, the new site id; [`restore_media_as`]), and checks
/// their content. Refused like [`restore_media`], and when `new` is a site of the sandbox;
/// writes nothing.
pub fn check_media_as(
    dir: &Path,
    tag: &ScratchTag,
    site: &TargetId,
    new: &TargetId,
) -> Result<MediaCheckReport> {
    if Manifest::load(dir)?.site(new).is_some() {
        return Err(Error::refused(format!(
            "check-media --as {new}: that is a site of the sandbox, not a new site"
        )));
    }
    check(dir, tag, site, Some(new))
}

fn check(
    dir: &Path,
    tag: &ScratchTag,
    site: &TargetId,
    new: Option<&TargetId>,
) -> Result<MediaCheckReport> {
    let s = open(dir, tag, site)?;
    let s = match new {
        Some(n) => s.into_new_site(n)?,
        None => s,
    };
    let live = MediaDir::new(&Layout::new(dir).media());
    let site_txt = new.unwrap_or(site).to_string();
    let live_files = live.site_files(&site_txt)?;
    let mut differences = Vec::new();
    let names: BTreeSet<&String> = s.objects.keys().chain(live_files.keys()).collect();
    for name in names {
        let d = match (s.objects.get(name), live_files.get(name)) {
            (Some(_), None) => Some(format!("object {name} is missing from the live store")),
            (None, Some(_)) => {
                Some(format!("object {name} is in the live store but not in the scratch copy"))
            }
            (Some(want), Some(got)) if &want.bytes != got => {
                Some(format!("object {name} differs from the scratch copy's"))
            }
            (Some(want), Some(_)) => check_blob(&live.blob(&want.sha), &want.sha, want.size)
                .err()
                .map(|why| format!("object {name}: {why}")),
            (None, None) => None,
        };
        differences.extend(d);
        if differences.len() >= MAX_DIFFERENCES {
            break;
        }
    }
    Ok(MediaCheckReport {
        store: "media",
        site: *site,
        restored_as: new.copied(),
        objects: s.objects.len() as u64,
        matching: differences.is_empty(),
        restore_point: s.restore_point,
        differences,
    })
}
