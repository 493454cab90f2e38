//! The outbox: requests to systems outside the sandbox (billing, search, notifications,
//! customer communication), one JSON line each in `DIR/outbox/<system>.jsonl`. A workflow step
//! runs at least once, so a request is keyed (the step's idempotency key) and queued once per
//! key; an exclusive lock on the file makes concurrent appends neither interleave nor duplicate.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::SystemTime;

use rewind_model::{RestorePoint, TargetId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::hex;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::time::SimTime;

/// `rewind sandbox outbox`.
#[derive(Clone, Debug)]
pub struct OutboxRequest {
    /// The outside system: `[a-z][a-z0-9-]*`, at most 64 characters.
    pub system: String,
    /// The site the request is about (a site of the sandbox, or a new site a restore as new
    /// claimed in the catalog), or `None` for a request about the whole batch (a status page,
    /// say).
    pub site: Option<TargetId>,
    /// What is asked of the system (free text, not empty).
    pub request: String,
    /// The idempotency key; `None` keys the request by a hash of system, site and request.
    pub key: Option<String>,
    /// When the request is queued (the caller's clock: the sandbox clock stops with the
    /// incident).
    pub at: SystemTime,
}

/// The outcome: `queued` is false when a request with the same key was already there.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxReport {
    /// The outside system.
    pub system: String,
    /// The site, if the request is about one.
    pub site: Option<TargetId>,
    /// True when this call appended the request.
    pub queued: bool,
}

/// One line of `DIR/outbox/<system>.jsonl`.
#[derive(Serialize)]
struct Line<'a> {
    system: &'a str,
    site: Option<String>,
    request: &'a str,
    key: &'a str,
    at: String,
}

#[derive(Deserialize)]
struct KeyOnly {
    key: String,
}

fn check_system(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::refused(format!(
            "--system `{name}`: a system name is a lowercase letter, then lowercase letters, \
             digits or '-' (at most 64), e.g. billing or customer-comms"
        )))
    }
}

/// The key of a request without an idempotency key: 32 hex digits of the SHA-256 of system,
/// site and request (length-prefixed, so no two different triples collide by concatenation).
fn content_key(system: &str, site: &str, request: &str) -> String {
    let mut h = Sha256::new();
    for part in [system, site, request] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// Appends the request to `DIR/outbox/<system>.jsonl` unless a line with its key is there.
/// Only a request about a new site (not one of the sandbox's) reads a store: the catalog's
/// claim of it ([`crate::claimed`]).
pub async fn outbox(dir: &Path, req: &OutboxRequest) -> Result<OutboxReport> {
    check_system(&req.system)?;
    let m = Manifest::load(dir)?;
    if let Some(site) = &req.site
        && m.site(site).is_none()
        && !crate::as_new::claimed(dir, site).await?
    {
        return Err(Error::refused(format!(
            "--site {site}: no such site in sandbox `{}` (`rewind sandbox sites` lists them), \
             nor a new site a restore as new claimed in its catalog",
            dir.display()
        )));
    }
    if req.request.trim().is_empty() {
        return Err(Error::refused("--request is empty: say what the system must do"));
    }
    let site = req.site.map(|s| s.to_string());
    let key = match req.key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => k.to_owned(),
        None => content_key(&req.system, site.as_deref().unwrap_or(""), &req.request),
    };
    let at = SimTime::from_restore_point(RestorePoint::from_system_time(req.at)).to_string();
    let mut text = serde_json::to_string(&Line {
        system: &req.system,
        site,
        request: &req.request,
        key: &key,
        at,
    })
    .map_err(|e| Error::Io { path: dir.into(), source: std::io::Error::other(e) })?;
    text.push('\n');

    let outdir = dir.join("outbox");
    std::fs::create_dir_all(&outdir).at(&outdir)?;
    let path = outdir.join(format!("{}.jsonl", req.system));
    let mut f = File::options().read(true).append(true).create(true).open(&path).at(&path)?;
    f.lock().at(&path)?;
    let mut existing = String::new();
    f.seek(SeekFrom::Start(0)).at(&path)?;
    f.read_to_string(&mut existing).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::corrupt(&path, None, "not UTF-8 text")
        } else {
            Error::Io { path: path.clone(), source: e }
        }
    })?;
    // A line cut short by a crash mid-append never made it.
    let complete = existing.rfind('\n').map_or(0, |i| i + 1);
    let mut queued = true;
    for (n, line) in existing[..complete].lines().enumerate() {
        let found: KeyOnly = serde_json::from_str(line).map_err(|e| {
            Error::corrupt(&path, Some(n as u64 + 1), format!("not an outbox line: {e}"))
        })?;
        if found.key == key {
            queued = false;
            break;
        }
    }
    if complete < existing.len() {
        f.set_len(complete as u64).at(&path)?;
    }
    if queued {
        f.write_all(text.as_bytes()).at(&path)?;
        f.sync_data().at(&path)?;
    }
    let _ = f.unlock();
    Ok(OutboxReport { system: req.system.clone(), site: req.site, queued })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_names_and_content_keys() {
        for ok in ["billing", "customer-comms", "s3"] {
            assert!(check_system(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Billing", "3d", "-x", "a_b", "a/b", "..", &"a".repeat(65)] {
            assert!(check_system(bad).is_err(), "{bad:?}");
        }
        assert_eq!(content_key("a", "b", "c").len(), 32);
        assert_ne!(content_key("ab", "", "c"), content_key("a", "b", "c"));
    }
}

#[derive(Deserialize)]
struct SiteRequest {
    site: Option<String>,
    request: String,
}

/// Whether `site` was handed to its customer: the routing system was asked to `activate` it
/// (Restore 1's `catalog.activate`). A new site that was is a customer's site, which no drill
/// cleanup may remove.
pub(crate) fn activated(dir: &Path, site: &TargetId) -> Result<bool> {
    let path = dir.join("outbox").join("routing.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).at(&path),
    };
    let site = site.to_string();
    Ok(text.lines().filter_map(|l| serde_json::from_str::<SiteRequest>(l).ok()).any(|r| {
        r.site.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&site))
            && r.request.trim() == "activate"
    }))
}
