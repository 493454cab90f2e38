//! The plan fingerprint: a persisted identity, so a versioned canonical encoding.
//!
//! A run stores the fingerprint of the plan it was created with; every later command rebuilds
//! the plan from the run's snapshot and refuses it if the fingerprint differs (the snapshot no
//! longer means what it meant). A fingerprint that changes for the same files therefore makes
//! every run made before the change unloadable: no resume, retry, cancel or report.
//!
//! So the bytes hashed are written here, field by field, not derived from the structs: every
//! struct and enum of the workflow is destructured exhaustively, and a new field does not compile
//! until its author decides how it is encoded. The rule for a new field: it is encoded only when
//! it differs from its default (as `retention` is), so every existing fingerprint stays the same;
//! a change to how an existing field is encoded is a new [`Fingerprint::version`], and
//! [`Fingerprint::compute`] keeps computing every older version, so stored runs still load.
//!
//! Version 1 is the encoding rewind 0.1 hashed: `rewind plan v1\n`, the workflow as compact JSON
//! (keys in declaration order, durations as humantime text, optional fields `null` or left out as
//! below), `\n`, then per target its UUID's 16 bytes, its kind, `\0`, its attributes as a JSON
//! object (sorted by name; a list as an array), `\n`, and last the restore point (RFC 3339). The
//! golden test `tests/fingerprint.rs` pins version-1 fingerprints of real files.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::targets::{AttrValue, Target, TargetSet};
use crate::template::Template;
use crate::time::RestorePoint;
use crate::workflow::{
    Action, AuditAction, Backoff, CommandAction, Condition, Connection, DEFAULT_RETENTION,
    PitrAction, PitrMethod, Policy, Pool, Preflight, Scope, SliceAction, SqlAction, Statement,
    Step, Workflow,
};

/// A plan's fingerprint: the version of its encoding and the SHA-256 of the encoded inputs
/// (workflow as parsed, so comments and layout do not count; targets in order; restore point).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    version: u16,
    digest: [u8; 32],
}

impl Fingerprint {
    /// The encoding new plans use.
    pub const CURRENT: u16 = 1;

    /// The fingerprint of the inputs under encoding `version`, or `None` for a version this
    /// build does not know (a newer rewind made it).
    pub fn compute(
        version: u16,
        workflow: &Workflow,
        targets: &TargetSet,
        restore_point: RestorePoint,
    ) -> Option<Self> {
        let bytes = match version {
            1 => v1(workflow, targets, restore_point),
            _ => return None,
        };
        Some(Self { version, digest: Sha256::digest(&bytes).into() })
    }

    /// The fingerprint of the inputs under the current encoding.
    pub fn current(workflow: &Workflow, targets: &TargetSet, restore_point: RestorePoint) -> Self {
        let bytes = v1(workflow, targets, restore_point);
        Self { version: Self::CURRENT, digest: Sha256::digest(&bytes).into() }
    }

    /// The encoding's version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The SHA-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// `sha256:<hex>` for version 1 (as every run of rewind 0.1 stored it), `v<N>:sha256:<hex>`
/// after.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version != 1 {
            write!(f, "v{}:", self.version)?;
        }
        f.write_str("sha256:")?;
        for b in self.digest {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Text that is not a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a plan fingerprint (sha256:<64 hex digits>, or v<N>:sha256:<64 hex digits>)")]
pub struct FingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, FingerprintError> {
        let bad = || FingerprintError(s.to_owned());
        let (version, rest) = match s.strip_prefix('v').and_then(|r| r.split_once(':')) {
            Some((v, rest)) => (v.parse::<u16>().map_err(|_| bad())?, rest),
            None => (1, s),
        };
        let hex = rest.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || version == 0 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, b) in digest.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Self { version, digest })
    }
}

/// A compact JSON writer: exactly the bytes `serde_json` writes for the same values.
struct Json(Vec<u8>);

impl Json {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn str(&mut self, s: &str) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, s);
    }

    /// `"key":` (after a comma unless `first`).
    fn key(&mut self, first: bool, k: &str) {
        if !first {
            self.raw(",");
        }
        self.str(k);
        self.raw(":");
    }

    fn field_str(&mut self, first: bool, k: &str, v: &str) {
        self.key(first, k);
        self.str(v);
    }

    fn field_duration(&mut self, first: bool, k: &str, d: Duration) {
        self.field_str(first, k, &humantime::format_duration(d).to_string());
    }

    fn field_opt_str(&mut self, k: &str, v: Option<&str>) {
        self.key(false, k);
        match v {
            Some(v) => self.str(v),
            None => self.raw("null"),
        }
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.raw("[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            each(self, item);
        }
        self.raw("]");
    }

    fn strs<T: AsRef<str>>(&mut self, items: &[T]) {
        self.list(items, |j, s| j.str(s.as_ref()));
    }

    fn templates(&mut self, items: &[Template]) {
        self.list(items, |j, t| j.str(t.as_str()));
    }
}

/// Version 1: the bytes rewind 0.1 hashed (its `serde_json` of the workflow, then the targets).
fn v1(workflow: &Workflow, targets: &TargetSet, restore_point: RestorePoint) -> Vec<u8> {
    let mut j = Json(Vec::with_capacity(16 * 1024));
    j.raw("rewind plan v1\n");
    v1_workflow(&mut j, workflow);
    j.raw("\n");
    for t in targets.targets() {
        let Target { id, kind, attrs, line: _ } = t;
        j.0.extend_from_slice(id.as_uuid().as_bytes());
        j.raw(kind);
        j.raw("\0");
        v1_attrs(&mut j, attrs);
        j.raw("\n");
    }
    j.raw(&restore_point.to_string());
    j.0
}

fn v1_attrs(j: &mut Json, attrs: &BTreeMap<crate::ids::AttrName, AttrValue>) {
    j.raw("{");
    for (i, (name, value)) in attrs.iter().enumerate() {
        j.key(i == 0, name.as_str());
        match value {
            AttrValue::One(v) => j.str(v),
            AttrValue::List(l) => j.strs(l),
        }
    }
    j.raw("}");
}

fn v1_workflow(j: &mut Json, w: &Workflow) {
    let Workflow {
        name,
        target_kind,
        description,
        defaults,
        resources,
        connections,
        steps,
        retention,
        preflight,
        topo: _,
        need_idx: _,
    } = w;
    j.raw("{");
    j.field_str(true, "name", name);
    j.field_str(false, "target_kind", target_kind.as_str());
    if let Some(d) = description {
        j.field_str(false, "description", d);
    }
    j.key(false, "defaults");
    v1_policy(j, defaults);
    j.key(false, "resources");
    j.list(resources, |j, p| {
        let Pool { name, capacity } = p;
        j.raw("{");
        j.field_str(true, "name", name.as_str());
        j.key(false, "capacity");
        j.raw(&capacity.to_string());
        j.raw("}");
    });
    j.key(false, "connections");
    j.list(connections, |j, c| {
        let Connection { name, url } = c;
        j.raw("{");
        j.field_str(true, "name", name.as_str());
        j.field_str(false, "url", url.as_str());
        j.raw("}");
    });
    j.key(false, "steps");
    j.list(steps, v1_step);
    // Added after 0.1: encoded only when not the default.
    if *retention != DEFAULT_RETENTION {
        j.field_duration(false, "retention", *retention);
    }
    if let Some(p) = preflight {
        let Preflight { state, action, timeout, line: _ } = p;
        j.key(false, "preflight");
        j.raw("{");
        let mut first = true;
        if let Some(s) = state {
            j.field_str(true, "state", s);
            first = false;
        }
        j.key(first, "action");
        v1_action(j, action);
        j.field_duration(false, "timeout", *timeout);
        j.raw("}");
    }
    j.raw("}");
}

fn v1_policy(j: &mut Json, p: &Policy) {
    let Policy { timeout, retries, backoff } = p;
    let Backoff { initial, max, factor, jitter } = backoff;
    j.raw("{");
    j.field_duration(true, "timeout", *timeout);
    j.key(false, "retries");
    j.raw(&retries.to_string());
    j.key(false, "backoff");
    j.raw("{");
    j.field_duration(true, "initial", *initial);
    j.field_duration(false, "max", *max);
    j.key(false, "factor");
    // serde_json writes an f32 through its shortest round-trip form ("2.0", "1.5").
    let _ = serde_json::to_writer(&mut j.0, factor);
    j.key(false, "jitter");
    j.raw(if *jitter { "true" } else { "false" });
    j.raw("}}");
}

fn v1_step(j: &mut Json, s: &Step) {
    let Step {
        id,
        description,
        scope,
        needs,
        resource,
        estimate,
        when,
        action,
        policy,
        queue,
        line: _,
    } = s;
    j.raw("{");
    j.field_str(true, "id", id.as_str());
    if let Some(d) = description {
        j.field_str(false, "description", d);
    }
    let scope = match scope {
        Scope::Run => "run".to_owned(),
        Scope::Target => "target".to_owned(),
        Scope::Group(a) => format!("group:{a}"),
    };
    j.field_str(false, "scope", &scope);
    j.key(false, "needs");
    j.list(needs, |j, n| j.str(n.as_str()));
    j.field_opt_str("resource", resource.as_ref().map(|r| r.as_str()));
    j.field_duration(false, "estimate", *estimate);
    j.key(false, "when");
    j.list(when, |j, c| {
        let Condition { attr, value } = c;
        j.raw("{");
        j.field_str(true, "attr", attr.as_str());
        j.field_str(false, "value", value);
        j.raw("}");
    });
    j.key(false, "action");
    v1_action(j, action);
    j.key(false, "policy");
    v1_policy(j, policy);
    // Added with workers (issue 17): only when set, so existing fingerprints do not change.
    if let Some(q) = queue {
        j.field_str(false, "queue", q.as_str());
    }
    j.raw("}");
}

fn v1_action(j: &mut Json, a: &Action) {
    j.raw("{");
    j.field_str(true, "kind", a.kind());
    match a {
        Action::Command(c) => {
            let CommandAction { program, args, env } = c;
            j.field_str(false, "program", program.as_str());
            j.key(false, "args");
            j.templates(args);
            j.key(false, "env");
            j.raw("{");
            for (i, (k, v)) in env.iter().enumerate() {
                j.field_str(i == 0, k, v.as_str());
            }
            j.raw("}");
        }
        Action::Sql(s) => {
            let SqlAction { connection, statements } = s;
            j.field_str(false, "connection", connection.as_str());
            j.key(false, "statements");
            j.list(statements, |j, st| {
                let Statement { sql, params } = st;
                j.raw("{");
                j.field_str(true, "sql", sql);
                j.key(false, "params");
                j.templates(params);
                j.raw("}");
            });
        }
        Action::Copy(s) | Action::Compare(s) => {
            let SliceAction {
                from,
                to,
                root,
                tables,
                tenant_column,
                exclude,
                tenant,
                as_tenant,
                source_restore_point,
                references,
            } = s;
            j.field_str(false, "from", from.as_str());
            j.field_str(false, "to", to.as_str());
            // `root` and `exclude` are written only when set, and `tenant_column` only when
            // given: a workflow of the tables-and-tenant-column kind keeps the fingerprint it
            // had before they existed, so its stored runs still load.
            if let Some(root) = root {
                j.field_str(false, "root", root);
            }
            j.key(false, "tables");
            j.strs(tables);
            if let Some(tenant_column) = tenant_column {
                j.field_str(false, "tenant_column", tenant_column);
            }
            if !exclude.is_empty() {
                j.key(false, "exclude");
                j.strs(exclude);
            }
            j.field_str(false, "tenant", tenant.as_str());
            // `as` only when set: workflows without it keep their fingerprints.
            if let Some(as_tenant) = as_tenant {
                j.field_str(false, "as", as_tenant.as_str());
            }
            j.field_opt_str("source_restore_point", source_restore_point.as_deref());
            // `references` only when given, each in its canonical spelling (whitespace does
            // not count): workflows without it keep their fingerprints.
            if !references.is_empty() {
                j.key(false, "references");
                j.strs(&references.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
        }
        Action::Audit(a) => {
            let AuditAction { require } = a;
            j.key(false, "require");
            j.list(require, |j, r| j.str(r.as_str()));
        }
        Action::Pitr(p) => {
            let PitrAction { method, into, run_as } = p;
            j.field_str(false, "method", method.name());
            match method {
                PitrMethod::Archive { base_backup, wal_archive } => {
                    j.field_str(false, "base_backup", base_backup.as_str());
                    j.field_str(false, "wal_archive", wal_archive.as_str());
                }
                PitrMethod::Pgbackrest { stanza, config } => {
                    j.field_str(false, "stanza", stanza.as_str());
                    j.field_str(false, "config", config.as_str());
                }
                PitrMethod::Binlog { base_backup, binlogs } => {
                    j.field_str(false, "base_backup", base_backup.as_str());
                    j.field_str(false, "binlogs", binlogs.as_str());
                }
            }
            j.field_str(false, "into", into.as_str());
            j.field_opt_str("run_as", run_as.as_deref());
        }
    }
    j.raw("}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_names_its_version() {
        let f = Fingerprint { version: 1, digest: [0xab; 32] };
        let text = f.to_string();
        assert_eq!(text, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<Fingerprint>(), Ok(f));
        let f2 = Fingerprint { version: 2, digest: [0x01; 32] };
        assert_eq!(f2.to_string(), format!("v2:sha256:{}", "01".repeat(32)));
        assert_eq!(f2.to_string().parse::<Fingerprint>(), Ok(f2));
        for bad in ["", "sha256:", "sha256:xyz", "md5:00", "v0:sha256:00", "vx:sha256:00"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
        assert!(format!("sha256:{}", "g".repeat(64)).parse::<Fingerprint>().is_err());
    }
}
