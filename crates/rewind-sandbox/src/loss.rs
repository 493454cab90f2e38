//! The data a restore to a given point cannot bring back: for each deleted site, the writes
//! stamped after the restore point and before the site's deletion. Read from the ledger, so it
//! is for reporting (a demo's summary, a drill's record), never for a step inside a workflow.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

use rewind_model::RestorePoint;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, line_error, open_own};
use crate::manifest::{Layout, Manifest};
use crate::time::SimTime;

/// One store's data loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreLoss {
    /// The store.
    pub store: String,
    /// Writes to deleted sites in this store after the restore point, before their deletion.
    pub lost_writes: u64,
    /// The earliest of them.
    pub first_lost: Option<RestorePoint>,
    /// The latest of them.
    pub last_lost: Option<RestorePoint>,
}

#[derive(Deserialize)]
struct LedgerLine<'a> {
    t: SimTime,
    #[serde(borrow)]
    store: Cow<'a, str>,
    #[serde(borrow)]
    site: Cow<'a, str>,
}

/// Per store (every store of the sandbox, in its order; zero where nothing was lost), the
/// writes to the incident's deleted sites stamped after `restore_point` and before each site's
/// deletion. Refused when the restore point is in the sandbox's future, or not before a
/// deleted site's deletion (restoring to it would not bring the site back). A sandbox without
/// an incident lost nothing.
pub fn data_loss(dir: &Path, restore_point: RestorePoint) -> Result<Vec<StoreLoss>> {
    let m = Manifest::load(dir)?;
    let rp = SimTime::from_restore_point(restore_point);
    if rp > m.now {
        return Err(Error::refused(format!(
            "restore point {restore_point} is in the sandbox's future (its clock is at {})",
            m.now
        )));
    }
    let deleted: BTreeMap<String, SimTime> = m
        .incident
        .iter()
        .flat_map(|i| i.deleted.iter().map(|d| (d.site.to_string(), d.at)))
        .collect();
    if let Some((site, at)) = deleted.iter().find(|(_, at)| rp >= **at) {
        return Err(Error::refused(format!(
            "restore point {restore_point} is not before the deletion of site {site} at {at}: a \
             restore to it does not bring the site back"
        )));
    }
    let mut out: Vec<StoreLoss> = m
        .all_stores()
        .iter()
        .map(|s| StoreLoss {
            store: s.name().to_owned(),
            lost_writes: 0,
            first_lost: None,
            last_lost: None,
        })
        .collect();
    let Some(last_deletion) = deleted.values().max().copied() else { return Ok(out) };
    let index: BTreeMap<String, usize> =
        out.iter().enumerate().map(|(i, s)| (s.store.clone(), i)).collect();

    let path = Layout::new(dir).ledger();
    let f = open_own(&path, "the ledger")?;
    for (n, line) in BufReader::with_capacity(1 << 16, f).lines().enumerate() {
        let line = line.map_err(|e| line_error(&path, n as u64 + 1, e))?;
        let e: LedgerLine<'_> = serde_json::from_str(&line).map_err(|err| {
            Error::corrupt(&path, Some(n as u64 + 1), format!("bad ledger line: {err}"))
        })?;
        // The ledger is in time order: nothing after the last deletion was lost.
        if e.t >= last_deletion {
            break;
        }
        if e.t <= rp {
            continue;
        }
        let Some(&deleted_at) = deleted.get(e.site.as_ref()) else { continue };
        if e.t >= deleted_at {
            continue;
        }
        let Some(&i) = index.get(e.store.as_ref()) else {
            return Err(Error::corrupt(
                &path,
                Some(n as u64 + 1),
                format!("unknown store `{}`", e.store),
            ));
        };
        let s = &mut out[i];
        let t = e.t.to_restore_point();
        s.lost_writes += 1;
        s.first_lost = Some(s.first_lost.map_or(t, |f| f.min(t)));
        s.last_lost = Some(s.last_lost.map_or(t, |l| l.max(t)));
    }
    Ok(out)
}
