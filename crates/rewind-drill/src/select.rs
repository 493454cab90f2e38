//! The candidates, the sample, and the restore point.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rewind_exec::{Registry, Vars};
use rewind_model::{
    Drill, DrillPoint, RestorePoint, Selector, Strategy, Target, TargetSet, TargetsFormat,
};
use serde_json::Value;

use crate::expand::{expand, run_command};

/// Why a drill could not select its targets or its restore point: it is refused before any run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectError(pub String);

/// The live tenants the drill's selector returns, parsed as a targets file (`file` names the
/// output in messages). A command's output is JSON Lines when its first non-blank character is
/// `{`, else CSV; a query's rows become JSON Lines (`id`, `kind`, the other columns attributes).
pub async fn candidates(
    drill: &Drill,
    registry: &Registry,
    vars: &Vars,
    dir: &Path,
    file: &str,
) -> Result<TargetSet, SelectError> {
    let (text, format) = match &drill.select.selector {
        Selector::Command(cmd) => {
            let out = run_command(cmd, vars, dir, None, None)
                .await
                .map_err(|e| SelectError(format!("the [select] command: {e}")))?;
            let format = if out.trim_start().starts_with('{') {
                TargetsFormat::JsonLines
            } else {
                TargetsFormat::Csv
            };
            (out, format)
        }
        Selector::Sql { connection, sql } => {
            let url = expand(connection, vars, None, None)
                .map_err(|e| SelectError(format!("[select] connection: {e}")))?;
            let url = match registry.resolvers().resolve_blocking(url.clone()).await {
                Some(r) => r.map_err(|e| SelectError(format!("[select] connection: {e}")))?,
                None => url,
            };
            let rows = rewind_exec::readonly::query(registry.pools(), &url, sql, &[])
                .await
                .map_err(|e| SelectError(format!("the [select] query: {e}")))?;
            let mut text = String::new();
            for row in rows {
                let obj: serde_json::Map<String, Value> = row
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(_) | Value::Array(_) => (k, v),
                        other => (k, Value::String(other.to_string())),
                    })
                    .collect();
                text.push_str(&Value::Object(obj).to_string());
                text.push('\n');
            }
            (text, TargetsFormat::JsonLines)
        }
    };
    let set = TargetSet::parse(file, &text, format).map_err(|d| SelectError(d.to_string()))?;
    if set.is_empty() {
        return Err(SelectError(format!("{file}: the selector returned no tenants")));
    }
    Ok(set)
}

/// The tenants that exist after an `as-new` drill's cleanup: `[cleanup] remaining`'s output
/// (a targets file, CSV or JSON Lines by its first character), or, without it, the selector's.
pub async fn remaining(
    drill: &Drill,
    registry: &Registry,
    vars: &Vars,
    dir: &Path,
    file: &str,
    run_id: &str,
) -> Result<TargetSet, SelectError> {
    let Some(cmd) = &drill.cleanup.remaining else {
        return candidates(drill, registry, vars, dir, file).await;
    };
    let out = run_command(cmd, vars, dir, Some(run_id), None)
        .await
        .map_err(|e| SelectError(format!("[cleanup] remaining: {e}")))?;
    let format = if out.trim_start().starts_with('{') {
        TargetsFormat::JsonLines
    } else {
        TargetsFormat::Csv
    };
    TargetSet::parse(file, &out, format).map_err(|d| SelectError(d.to_string()))
}

/// splitmix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth speaking of at these sizes.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(((u128::from(self.next())) * n as u128) >> 64).unwrap_or(0)
    }
}

/// The sample of `candidates` the drill restores.
///
/// - random: `sample` of them uniformly (a partial Fisher-Yates shuffle seeded with `seed`), in
///   the candidates' order;
/// - least-recently-drilled: those whose last drill (`last_drilled`, Unix ms by target id) is the
///   oldest, never-drilled first, ties in the candidates' order;
/// - list: the listed ids, each of which must be a candidate (a live tenant).
pub fn sample(
    drill: &Drill,
    candidates: &[Target],
    seed: u64,
    last_drilled: &BTreeMap<String, i64>,
) -> Result<Vec<Target>, SelectError> {
    let n = drill.select.sample as usize;
    if candidates.len() < n {
        return Err(SelectError(format!(
            "the selector returned {} tenant(s); the drill samples {n}",
            candidates.len()
        )));
    }
    let picked: Vec<usize> = match &drill.select.strategy {
        Strategy::Random { .. } => {
            let mut idx: Vec<usize> = (0..candidates.len()).collect();
            let mut rng = Rng(seed);
            for i in 0..n {
                let j = i + rng.below(idx.len() - i);
                idx.swap(i, j);
            }
            let mut chosen = idx[..n].to_vec();
            chosen.sort_unstable();
            chosen
        }
        Strategy::LeastRecentlyDrilled { .. } => {
            let mut idx: Vec<usize> = (0..candidates.len()).collect();
            idx.sort_by_key(|&i| {
                (last_drilled.get(&candidates[i].id.to_string()).copied().unwrap_or(i64::MIN), i)
            });
            idx.truncate(n);
            idx
        }
        Strategy::List { ids } => {
            let mut chosen = Vec::new();
            for id in ids.iter().take(n) {
                let i =
                    candidates.iter().position(|t| t.id.to_string() == *id).ok_or_else(|| {
                        SelectError(format!(
                            "[select] ids: {id} is not among the {} tenants the selector returned",
                            candidates.len()
                        ))
                    })?;
                chosen.push(i);
            }
            chosen
        }
    };
    Ok(picked.into_iter().map(|i| candidates[i].clone()).collect())
}

/// The attribute an `as-new` drill gives each sampled tenant: the id it is restored as, which
/// the drill's workflow reads as `{{target.attr.new_id}}`.
pub const NEW_ID: &str = "new_id";

/// Gives each sampled tenant of an `as-new` drill the id it is restored as (attribute
/// [`NEW_ID`]): a fresh random uuid, or the one the selector gave. Every new id must be no
/// tenant's the selector returned (a drill must never restore over a live tenant) and unique in
/// the sample; a selector's `new_id` that breaks either is refused.
pub fn assign_new_ids(sampled: &mut [Target], candidates: &[Target]) -> Result<(), SelectError> {
    let attr = rewind_model::AttrName::new(NEW_ID).map_err(|e| SelectError(e.to_string()))?;
    let live: std::collections::HashSet<String> =
        candidates.iter().map(|t| t.id.to_string()).collect();
    let mut given = std::collections::HashSet::new();
    for t in sampled.iter_mut() {
        let id = match t.attrs.get(&attr) {
            Some(v) => {
                let v = v.to_string();
                let parsed = uuid::Uuid::parse_str(v.trim()).map_err(|_| {
                    SelectError(format!(
                        "[select]: tenant {}: its `{NEW_ID}` {v:?} is not a uuid",
                        t.id
                    ))
                })?;
                parsed.hyphenated().to_string()
            }
            None => loop {
                let fresh = uuid::Uuid::new_v4().hyphenated().to_string();
                if !live.contains(&fresh) && !given.contains(&fresh) {
                    break fresh;
                }
            },
        };
        if live.contains(&id) {
            return Err(SelectError(format!(
                "[select]: tenant {}: its `{NEW_ID}` {id} is a live tenant's id; a drill restores \
                 as a new tenant only under an id no tenant has",
                t.id
            )));
        }
        if !given.insert(id.clone()) {
            return Err(SelectError(format!(
                "[select]: tenant {}: its `{NEW_ID}` {id} is another sampled tenant's too",
                t.id
            )));
        }
        t.attrs.insert(attr.clone(), rewind_model::AttrValue::One(id));
    }
    Ok(())
}

/// What the `[rpo]` probe said: the newest recoverable instant, and the source's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recoverable {
    /// The newest instant a restore can reach (the last archived commit, the newest journal
    /// entry).
    pub newest: RestorePoint,
    /// The source's clock (a sandbox has its own); the caller's when the probe gives none.
    pub now: RestorePoint,
}

impl Recoverable {
    /// The achieved RPO: how old the newest recoverable instant is.
    pub fn rpo(&self) -> Duration {
        self.now.system_time().duration_since(self.newest.system_time()).unwrap_or_default()
    }
}

/// Runs the `[rpo]` probe: its last non-blank stdout line is `{"newest": "<RFC 3339>", "now":
/// "<RFC 3339>"}` (`now` optional: `wall_now` then).
pub async fn probe(
    drill: &Drill,
    vars: &Vars,
    dir: &Path,
    wall_now: SystemTime,
) -> Result<Option<Recoverable>, SelectError> {
    let Some(cmd) = &drill.rpo_probe else { return Ok(None) };
    let out = run_command(cmd, vars, dir, None, None)
        .await
        .map_err(|e| SelectError(format!("[rpo]: {e}")))?;
    let line = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let bad = |why: &str| {
        SelectError(format!(
            "[rpo]: the probe printed {line:?}: {why}; expected {{\"newest\": \"<RFC 3339 UTC>\", \"now\": \"<RFC 3339 UTC>\"}}"
        ))
    };
    let v: Value = serde_json::from_str(line).map_err(|_| bad("not JSON"))?;
    let at = |key: &str| -> Result<Option<RestorePoint>, SelectError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|e: rewind_model::RestorePointError| bad(&e.to_string())),
            Some(_) => Err(bad(&format!("`{key}` is not a string"))),
        }
    };
    let newest = at("newest")?.ok_or_else(|| bad("no `newest`"))?;
    let now = at("now")?.unwrap_or(RestorePoint::from_system_time(wall_now));
    if newest > now {
        return Err(bad("`newest` is after `now`"));
    }
    Ok(Some(Recoverable { newest, now }))
}

/// The drill's restore point: the newest recoverable instant, or `now - age` (the source's clock
/// when the probe gave one).
pub fn restore_point(
    drill: &Drill,
    recoverable: Option<&Recoverable>,
    wall_now: SystemTime,
) -> Result<RestorePoint, SelectError> {
    match (drill.restore_point, recoverable) {
        (DrillPoint::Latest, Some(r)) => Ok(r.newest),
        (DrillPoint::Latest, None) => {
            Err(SelectError("restore_point = \"latest\" needs the [rpo] probe".to_owned()))
        }
        (DrillPoint::Age(age), r) => {
            let now = r.map_or(wall_now, |r| r.now.system_time());
            now.checked_sub(age).map(RestorePoint::from_system_time).ok_or_else(|| {
                SelectError(format!(
                    "restore_point: {} before now is before 1970",
                    humantime::format_duration(age)
                ))
            })
        }
    }
}
