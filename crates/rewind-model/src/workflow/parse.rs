//! Reading a workflow from TOML: a walk over the spanned document that collects every mistake with
//! its location instead of stopping at the first, then cross-reference checks (needs, resources,
//! connections, templates, cycles) over the steps that did parse.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    Action, AuditAction, Backoff, CommandAction, Condition, Connection, DEFAULT_RETENTION,
    PitrAction, PitrMethod, Policy, Pool, Preflight, Reference, Scope, SliceAction, SqlAction,
    Statement, Step, Workflow,
};
use crate::diag::{Diagnostics, ErrorKind as K, Sink, suggestion};
use crate::ids::{AttrName, ConnectionName, PoolName, StepId, TargetKind};
use crate::sql::{Dialect, first_keyword, shorten, single_statement};
use crate::template::{Placeholder, Template, UrlTemplate, UrlTemplateError};

type Val<'i> = Spanned<DeValue<'i>>;
type Span = Range<usize>;

const TOP_KEYS: &[&str] = &[
    "name",
    "target_kind",
    "description",
    "retention",
    "defaults",
    "resources",
    "connections",
    "preflight",
    "steps",
];
const PREFLIGHT_KEYS: &[&str] = &["state", "action", "timeout"];
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const POLICY_KEYS: &[&str] = &["timeout", "retries", "backoff"];
const BACKOFF_KEYS: &[&str] = &["initial", "max", "factor", "jitter"];
const STEP_KEYS: &[&str] = &[
    "id",
    "description",
    "scope",
    "needs",
    "resource",
    "estimate",
    "when",
    "action",
    "timeout",
    "retries",
    "backoff",
    "queue",
];
const ACTION_KINDS: &[&str] = &["command", "sql", "copy", "compare", "audit", "pitr"];
const COMMAND_KEYS: &[&str] = &["kind", "program", "args", "env"];
const SQL_KEYS: &[&str] = &["kind", "connection", "sql", "params", "statements"];
const STATEMENT_KEYS: &[&str] = &["sql", "params"];
const SLICE_KEYS: &[&str] = &[
    "kind",
    "from",
    "to",
    "root",
    "tables",
    "tenant_column",
    "exclude",
    "tenant",
    "as",
    "source_restore_point",
    "references",
];
const AUDIT_KEYS: &[&str] = &["kind", "require"];
const PITR_KEYS: &[&str] = &[
    "kind",
    "engine",
    "method",
    "base_backup",
    "wal_archive",
    "stanza",
    "config",
    "binlogs",
    "into",
    "run_as",
];
/// Each `pitr` method: its engine and its keys.
const PITR_METHODS: &[(&str, &str, [&str; 2])] = &[
    ("archive", "postgres", ["base_backup", "wal_archive"]),
    ("pgbackrest", "postgres", ["stanza", "config"]),
    ("binlog", "mariadb", ["base_backup", "binlogs"]),
];
const MAX_RETRIES: i64 = 1000;

pub(super) fn parse(file: &str, text: &str) -> Result<Workflow, Diagnostics> {
    parse_as(file, text, Rules::Current).map(|(wf, _)| wf)
}

/// Which rules a text is held to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Rules {
    /// Every rule: a workflow file being checked, planned or run anew.
    Current,
    /// A stored run's snapshot, written when an earlier release accepted it: the rules added
    /// since (see [`Parser::later_rule`]) are reported apart instead of refusing the text, so
    /// the run can still be shown, cancelled and (where it is safe) resumed.
    Snapshot,
}

/// Parses `text` under `rules`; with [`Rules::Snapshot`], also returns what the rules added since
/// would have refused.
pub(super) fn parse_as(
    file: &str,
    text: &str,
    rules: Rules,
) -> Result<(Workflow, Vec<String>), Diagnostics> {
    let mut p = Parser { sink: Sink::new(file, text), ids: Vec::new(), rules, relaxed: Vec::new() };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            p.sink.at(&e.span().unwrap_or(0..0), K::Syntax, None, e.message().trim().to_owned());
        }
        return Err(p.sink.finish().err().unwrap_or(Diagnostics(Vec::new())));
    }
    let doc_span = doc.span();
    let doc = doc.into_inner();
    let wf = p.workflow(&doc, doc_span);
    p.sink.finish()?;
    wf.map(|wf| (wf, p.relaxed)).ok_or_else(|| Diagnostics(Vec::new()))
}

/// What an action refers to outside itself, with spans, for the cross-reference checks.
#[derive(Default)]
struct Refs {
    connections: Vec<(ConnectionName, Span)>,
    require: Vec<(StepId, Span)>,
}

struct Parser<'a> {
    sink: Sink<'a>,
    /// Every step id read, with its span, including steps with other mistakes.
    ids: Vec<(StepId, Span)>,
    rules: Rules,
    /// What [`Parser::later_rule`] let through for a snapshot.
    relaxed: Vec<String>,
}

/// A step as read, before cross-references are checked.
struct Draft {
    id: StepId,
    span: Span,
    scope: Scope,
    needs: Vec<(StepId, Span)>,
    needs_span: Span,
    resource: Option<(PoolName, Span)>,
    estimate: Duration,
    when: Vec<Condition>,
    action: Action,
    /// Connections the action names, where.
    conn_refs: Vec<(ConnectionName, Span)>,
    /// Steps an audit requires, where.
    require_refs: Vec<(StepId, Span)>,
    templates: Vec<(Template, Span)>,
    policy: Policy,
    description: Option<String>,
    queue: Option<Template>,
}

/// The spans of the `sql` strings of a `sql` action (its `sql`, or each of its `statements`),
/// in order.
fn sql_spans(action: &Val<'_>) -> Vec<Span> {
    let DeValue::Table(t) = action.get_ref() else { return Vec::new() };
    if let Some(q) = t.get("sql") {
        return vec![q.span()];
    }
    let Some(DeValue::Array(items)) = t.get("statements").map(Spanned::get_ref) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item.get_ref() {
            DeValue::Table(st) => st.get("sql").map(Spanned::span),
            _ => None,
        })
        .collect()
}

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Parser<'_> {
    fn err(&mut self, span: &Span, kind: K, step: Option<&StepId>, msg: impl Into<String>) {
        self.sink.at(span, kind, step, msg);
    }

    /// A rule added after rewind 0.1 (literal passwords in URLs, templates in a `program`, a
    /// preflight of several statements): an error for a file, but for a stored run's snapshot,
    /// which an earlier release accepted, only noted. Returns whether it was an error.
    fn later_rule(&mut self, span: &Span, kind: K, step: Option<&StepId>, msg: String) -> bool {
        match self.rules {
            Rules::Current => {
                self.err(span, kind, step, msg);
                true
            }
            Rules::Snapshot => {
                let at = step.map(|s| format!("step `{s}`: ")).unwrap_or_default();
                self.relaxed.push(format!("{at}{msg}"));
                false
            }
        }
    }

    /// Reports keys of `table` that are not in `allowed`.
    fn known_keys(
        &mut self,
        table: &DeTable<'_>,
        allowed: &[&str],
        what: &str,
        step: Option<&StepId>,
    ) {
        for (key, _) in table.iter() {
            let k: &str = key.get_ref();
            if !allowed.contains(&k) {
                let hint = suggestion(k, allowed.iter().copied());
                let list = allowed.join(", ");
                self.err(
                    &key.span(),
                    K::UnknownKey,
                    step,
                    format!("unknown key `{k}` in {what}{hint}; expected one of: {list}"),
                );
            }
        }
    }

    fn wrong_type(&mut self, v: &Val<'_>, key: &str, expected: &str, step: Option<&StepId>) {
        let got = type_name(v.get_ref());
        self.err(&v.span(), K::InvalidType, step, format!("`{key}` must be {expected}, not {got}"));
    }

    fn string(&mut self, v: &Val<'_>, key: &str, step: Option<&StepId>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(v, key, "a string", step);
                None
            }
        }
    }

    fn table<'t, 'i>(
        &mut self,
        v: &'t Val<'i>,
        key: &str,
        step: Option<&StepId>,
    ) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table", step);
                None
            }
        }
    }

    fn strings(
        &mut self,
        v: &Val<'_>,
        key: &str,
        step: Option<&StepId>,
    ) -> Option<Vec<(String, Span)>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, key, "an array of strings", step);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                _ => {
                    self.wrong_type(item, &format!("{key}[]"), "a string", step);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A non-empty list of table names (`tables`, `exclude`): each an identifier, none twice.
    fn table_list(&mut self, v: &Val<'_>, key: &str, step: Option<&StepId>) -> Option<Vec<String>> {
        let list = self.strings(v, key, step)?;
        if list.is_empty() {
            self.err(&v.span(), K::InvalidValue, step, format!("`{key}` is empty"));
            return None;
        }
        let mut ok = true;
        let mut names: Vec<String> = Vec::new();
        for (name, span) in list {
            if !is_identifier(&name) {
                self.err(&span, K::InvalidId, step, identifier_rule("table", &name));
                ok = false;
            } else if names.contains(&name) {
                self.err(&span, K::InvalidValue, step, format!("table `{name}` is listed twice"));
                ok = false;
            } else {
                names.push(name);
            }
        }
        ok.then_some(names)
    }

    /// `references` of a copy or compare: a non-empty list, each item a [`Reference`], none
    /// twice.
    fn references(&mut self, v: &Val<'_>, step: Option<&StepId>) -> Option<Vec<Reference>> {
        let list = self.strings(v, "references", step)?;
        if list.is_empty() {
            self.err(&v.span(), K::InvalidValue, step, "`references` is empty: leave it out");
            return None;
        }
        let mut ok = true;
        let mut out: Vec<Reference> = Vec::new();
        for (text, span) in list {
            match text.parse::<Reference>() {
                Ok(r) if out.iter().any(|o| o.same_as(&r)) => {
                    self.err(
                        &span,
                        K::InvalidValue,
                        step,
                        format!("`references` lists {text:?} twice"),
                    );
                    ok = false;
                }
                Ok(r) => out.push(r),
                Err(why) => {
                    self.err(
                        &span,
                        K::InvalidValue,
                        step,
                        format!(
                            "`references` item {text:?} is not a reference: {why}; write \
                             \"child(column, …) -> parent(column, …)\""
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn integer(&mut self, v: &Val<'_>, key: &str, step: Option<&StepId>) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        step,
                        format!("`{key}` = {i} is out of range"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(v, key, "an integer", step);
                None
            }
        }
    }

    fn duration(&mut self, v: &Val<'_>, key: &str, step: Option<&StepId>) -> Option<Duration> {
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(
                v,
                key,
                "a duration string such as \"90s\", \"5m\" or \"2h 30m\"",
                step,
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    &v.span(),
                    K::InvalidDuration,
                    step,
                    format!("`{key}` = {s:?} is not a duration ({e}); write e.g. \"90s\", \"5m\", \"2h 30m\""),
                );
                None
            }
        }
    }

    fn workflow(&mut self, doc: &DeTable<'_>, doc_span: Span) -> Option<Workflow> {
        self.known_keys(doc, TOP_KEYS, "the workflow", None);
        let name = self.required_string(doc, "name", &doc_span, "the workflow");
        if let Some(v) = doc.get("name")
            && name.as_deref().is_some_and(|n| n.trim().is_empty())
        {
            self.err(&v.span(), K::InvalidValue, None, "`name` must not be empty");
        }
        let target_kind =
            self.required_string(doc, "target_kind", &doc_span, "the workflow").and_then(|k| {
                TargetKind::new(&k)
                    .map_err(|e| {
                        let span = doc.get("target_kind").map_or(doc_span.clone(), Spanned::span);
                        self.err(&span, K::InvalidId, None, e.to_string());
                    })
                    .ok()
            });
        let description = doc.get("description").and_then(|v| self.string(v, "description", None));
        let defaults = match doc.get("defaults") {
            Some(v) => match self.table(v, "defaults", None) {
                Some(t) => {
                    self.known_keys(t, POLICY_KEYS, "[defaults]", None);
                    self.policy(t, Policy::BUILT_IN, None)
                }
                None => Policy::BUILT_IN,
            },
            None => Policy::BUILT_IN,
        };
        let retention = match doc.get("retention") {
            Some(v) => match self.duration(v, "retention", None) {
                Some(d) if d.is_zero() => {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        None,
                        "`retention` must be longer than 0s",
                    );
                    DEFAULT_RETENTION
                }
                Some(d) => d,
                None => DEFAULT_RETENTION,
            },
            None => DEFAULT_RETENTION,
        };
        let resources = self.resources(doc);
        let connections = self.connections(doc);
        let preflight = doc.get("preflight").and_then(|v| self.preflight(v, &connections));
        let drafts = self.steps(doc, &doc_span, &defaults);
        let pools: Vec<&PoolName> = resources.iter().map(|p| &p.name).collect();
        let topo = self.cross_check(&drafts, &pools, &connections);
        let (name, target_kind) = (name?, target_kind?);
        let steps = drafts
            .into_iter()
            .map(|d| Step {
                line: self.sink.location(&d.span).line,
                id: d.id,
                description: d.description,
                scope: d.scope,
                needs: d.needs.into_iter().map(|(n, _)| n).collect(),
                resource: d.resource.map(|(r, _)| r),
                estimate: d.estimate,
                when: d.when,
                action: d.action,
                policy: d.policy,
                queue: d.queue,
            })
            .collect::<Vec<Step>>();
        let need_idx = steps
            .iter()
            .map(|s: &Step| {
                s.needs.iter().filter_map(|n| steps.iter().position(|x| &x.id == n)).collect()
            })
            .collect();
        Some(Workflow {
            name,
            target_kind,
            description,
            defaults,
            resources,
            connections,
            steps,
            retention,
            preflight,
            topo: topo?,
            need_idx,
        })
    }

    /// `[preflight]`: a `sql` query (once per target) or a `command` (once, IDs on stdin). Its
    /// templates may read the restore point and, for a query, the target; nothing else exists
    /// before the run.
    fn preflight(&mut self, v: &Val<'_>, conns: &[Connection]) -> Option<Preflight> {
        let t = self.table(v, "preflight", None)?;
        self.known_keys(t, PREFLIGHT_KEYS, "[preflight]", None);
        let state = t.get("state").and_then(|s| {
            let raw = self.string(s, "state", None)?;
            if raw.trim().is_empty() {
                self.err(&s.span(), K::InvalidValue, None, "`state` must not be empty");
                return None;
            }
            Some(raw)
        });
        let timeout = match t.get("timeout") {
            Some(d) => self.duration(d, "timeout", None).unwrap_or(PREFLIGHT_TIMEOUT),
            None => PREFLIGHT_TIMEOUT,
        };
        let Some(av) = t.get("action") else {
            self.err(
                &v.span(),
                K::MissingKey,
                None,
                "[preflight] has no `action` (a `sql` query or a `command`)",
            );
            return None;
        };
        let mut templates = Vec::new();
        let mut refs = Refs::default();
        let action = self.action(av, None, &mut templates, &mut refs)?;
        let per_target = match &action {
            Action::Sql(sql) => {
                // A preflight only reads: it runs before the operator confirmed anything, and
                // under --dry-run. Its text is one query here; the database enforces the rest
                // (rewind-exec runs it in a read-only transaction).
                if !self.preflight_queries(sql, av, conns) {
                    return None;
                }
                true
            }
            Action::Command(_) => false,
            other => {
                self.err(
                    &av.span(),
                    K::InvalidValue,
                    None,
                    format!(
                        "a preflight is a `sql` query or a `command`, not a `{}` action",
                        other.kind()
                    ),
                );
                return None;
            }
        };
        // Why a placeholder cannot resolve in a preflight, if it cannot.
        let why = |p: &Placeholder| match p {
            Placeholder::RestorePoint => None,
            Placeholder::TargetId | Placeholder::TargetKind | Placeholder::TargetAttr(_) => {
                (!per_target).then_some(
                    "a preflight command runs once for all targets (their IDs are on its stdin)",
                )
            }
            Placeholder::RunId => Some("the preflight runs before the run exists"),
            Placeholder::Needs { .. } => Some("the preflight runs before any step"),
            Placeholder::GroupValue | Placeholder::StepId | Placeholder::Attempt => {
                Some("the preflight is not a step")
            }
        };
        let mut ok = true;
        for (tpl, span) in &templates {
            for p in tpl.placeholders() {
                if let Some(why) = why(p) {
                    let msg = format!("`{{{{{p}}}}}` cannot resolve in [preflight]: {why}");
                    self.err(span, K::UnresolvedTemplate, None, msg);
                    ok = false;
                }
            }
        }
        for (name, span) in &refs.connections {
            let Some(conn) = conns.iter().find(|c| &c.name == name) else {
                let names: Vec<&str> = conns.iter().map(|c| c.name.as_str()).collect();
                let hint = suggestion(name.as_str(), names.iter().copied());
                let declared = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
                self.err(
                    span,
                    K::UnknownConnection,
                    None,
                    format!(
                        "unknown connection `{name}`{hint}; [connections] declares: {declared}"
                    ),
                );
                ok = false;
                continue;
            };
            for p in conn.url.placeholders() {
                if let Some(why) = why(p) {
                    let msg = format!(
                        "connection `{name}`: `{{{{{p}}}}}` cannot resolve in [preflight]: {why}"
                    );
                    self.err(span, K::UnresolvedTemplate, None, msg);
                    ok = false;
                }
            }
        }
        let line = self.sink.location(&v.span()).line;
        ok.then_some(Preflight { state, action, timeout, line })
    }

    /// Checks the statements of a `[preflight]` `sql` action: each one statement (under the
    /// connection's dialect, or every dialect when its URL does not say), and a query (`SELECT`
    /// or `WITH`). Reports each problem at the statement's text; `false` if there was one.
    fn preflight_queries(&mut self, sql: &SqlAction, av: &Val<'_>, conns: &[Connection]) -> bool {
        let dialect = conns
            .iter()
            .find(|c| c.name == sql.connection)
            .and_then(|c| Dialect::of_url(c.url.as_str()));
        let spans = sql_spans(av);
        let mut ok = true;
        for (i, st) in sql.statements.iter().enumerate() {
            let span = spans.get(i).cloned().unwrap_or_else(|| av.span());
            if let Err(e) = single_statement(&st.sql, dialect) {
                let at = self.offset_in_string(&span, &st.sql, e.offset());
                let how = match dialect {
                    Some(_) => String::new(),
                    None => " (the connection's URL does not name its database before the run, so the text is read as PostgreSQL, SQLite and MySQL SQL)".to_owned(),
                };
                if self.later_rule(
                    &at,
                    K::InvalidValue,
                    None,
                    format!("[preflight] query `{}`: {e}{how}", shorten(&st.sql)),
                ) {
                    ok = false;
                }
                continue;
            }
            let first = first_keyword(&st.sql, dialect.unwrap_or(Dialect::Postgres)).unwrap_or("");
            if !first.eq_ignore_ascii_case("select") && !first.eq_ignore_ascii_case("with") {
                self.err(
                    &span,
                    K::InvalidValue,
                    None,
                    format!(
                        "a preflight query only reads: its statements must be SELECTs, not `{first}` (a `WITH … SELECT` is a query too)"
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    /// The span of byte `offset` of `text`, the value of the TOML string at `span`, when the
    /// string holds no escapes (so the source shows the text as is); else the string's span.
    fn offset_in_string(&self, span: &Span, text: &str, offset: usize) -> Span {
        let raw = self.sink.text().get(span.clone()).unwrap_or("");
        for quote in ["\"\"\"", "'''", "\"", "'"] {
            let Some(inner) = raw.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) else {
                continue;
            };
            // A multi-line string drops a newline right after its opening quotes.
            let skip = if quote.len() == 3 && inner.starts_with('\n') { 1 } else { 0 };
            if &inner[skip..] == text {
                let at = span.start + quote.len() + skip + offset;
                return at..at;
            }
            break;
        }
        span.clone()
    }

    fn required_string(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        at: &Span,
        what: &str,
    ) -> Option<String> {
        match t.get(key) {
            Some(v) => self.string(v, key, None),
            None => {
                self.err(at, K::MissingKey, None, format!("{what} has no `{key}`"));
                None
            }
        }
    }

    /// Reads `timeout`, `retries` and `backoff` from `t` over `base`.
    fn policy(&mut self, t: &DeTable<'_>, base: Policy, step: Option<&StepId>) -> Policy {
        let mut p = base;
        if let Some(v) = t.get("timeout")
            && let Some(d) = self.duration(v, "timeout", step)
        {
            if d.is_zero() {
                self.err(&v.span(), K::InvalidValue, step, "`timeout` must be longer than zero");
            } else {
                p.timeout = d;
            }
        }
        if let Some(v) = t.get("retries")
            && let Some(n) = self.integer(v, "retries", step)
        {
            match u32::try_from(n) {
                Ok(n) if i64::from(n) <= MAX_RETRIES => p.retries = n,
                _ => self.err(
                    &v.span(),
                    K::InvalidValue,
                    step,
                    format!("`retries` = {n} must be between 0 and {MAX_RETRIES}"),
                ),
            }
        }
        if let Some(v) = t.get("backoff")
            && let Some(b) = self.table(v, "backoff", step)
        {
            self.known_keys(b, BACKOFF_KEYS, "backoff", step);
            p.backoff = self.backoff(b, &v.span(), p.backoff, step);
        }
        p
    }

    fn backoff(
        &mut self,
        t: &DeTable<'_>,
        span: &Span,
        base: Backoff,
        step: Option<&StepId>,
    ) -> Backoff {
        let mut b = base;
        if let Some(d) = t.get("initial").and_then(|v| self.duration(v, "backoff.initial", step)) {
            b.initial = d;
        }
        if let Some(d) = t.get("max").and_then(|v| self.duration(v, "backoff.max", step)) {
            b.max = d;
        }
        if let Some(v) = t.get("factor") {
            let f = match v.get_ref() {
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
                _ => {
                    self.wrong_type(v, "backoff.factor", "a number", step);
                    None
                }
            };
            match f {
                Some(f) if f.is_finite() && (1.0..=100.0).contains(&f) => b.factor = f as f32,
                Some(f) => self.err(
                    &v.span(),
                    K::InvalidValue,
                    step,
                    format!("`backoff.factor` = {f} must be between 1 and 100"),
                ),
                None => {}
            }
        }
        if let Some(v) = t.get("jitter") {
            match v.get_ref() {
                DeValue::Boolean(j) => b.jitter = *j,
                _ => self.wrong_type(v, "backoff.jitter", "true or false", step),
            }
        }
        if b.max < b.initial {
            self.err(
                span,
                K::InvalidValue,
                step,
                format!(
                    "backoff `max` ({}) is shorter than `initial` ({})",
                    humantime::format_duration(b.max),
                    humantime::format_duration(b.initial)
                ),
            );
        }
        b
    }

    fn resources(&mut self, doc: &DeTable<'_>) -> Vec<Pool> {
        let Some(t) = doc.get("resources").and_then(|v| self.table(v, "resources", None)) else {
            return Vec::new();
        };
        let mut pools = Vec::new();
        for (key, v) in t.iter() {
            let name = match PoolName::new(key.get_ref()) {
                Ok(n) => n,
                Err(e) => {
                    self.err(&key.span(), K::InvalidId, None, e.to_string());
                    continue;
                }
            };
            let Some(cap) = self.integer(v, &format!("resources.{name}"), None) else { continue };
            match u32::try_from(cap) {
                Ok(c) if c >= 1 => pools.push(Pool { name, capacity: c }),
                _ => self.err(
                    &v.span(),
                    K::InvalidCapacity,
                    None,
                    format!("resource `{name}` has capacity {cap}; a pool needs at least 1 slot"),
                ),
            }
        }
        pools
    }

    fn connections(&mut self, doc: &DeTable<'_>) -> Vec<Connection> {
        let Some(t) = doc.get("connections").and_then(|v| self.table(v, "connections", None))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, v) in t.iter() {
            let name = match ConnectionName::new(key.get_ref()) {
                Ok(n) => n,
                Err(e) => {
                    self.err(&key.span(), K::InvalidId, None, e.to_string());
                    continue;
                }
            };
            if let Some(url) = self.string(v, &format!("connections.{name}"), None) {
                if url.trim().is_empty() {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        None,
                        format!("connection `{name}` has an empty URL"),
                    );
                } else {
                    match UrlTemplate::parse(&url) {
                        Ok(url) => {
                            // The workflow's text is stored with every run and shown by
                            // `check`: a password in it would be kept forever.
                            if let Some(why) = url.literal_secret() {
                                self.later_rule(
                                    &v.span(),
                                    K::LiteralSecret,
                                    None,
                                    format!("connection `{name}`: {why}"),
                                );
                            }
                            out.push(Connection { name, url });
                        }
                        Err(UrlTemplateError::Syntax(e)) => self.err(
                            &v.span(),
                            K::UnresolvedTemplate,
                            None,
                            format!("connection `{name}`: {}", e.message),
                        ),
                        Err(e @ (UrlTemplateError::Scheme(_) | UrlTemplateError::QueryKey(_))) => {
                            // rewind 0.1 accepted a whole-URL placeholder (`{{needs.pitr.url}}`)
                            // and one in a query key: a stored run with one still loads, and is
                            // refused at resume.
                            let kind = match e {
                                UrlTemplateError::Scheme(_) => K::TemplateInScheme,
                                _ => K::TemplateInQueryKey,
                            };
                            if !self.later_rule(
                                &v.span(),
                                kind,
                                None,
                                format!("connection `{name}`: {e}"),
                            ) && let Some(url) = UrlTemplate::parse_with_templated_shape(&url)
                            {
                                out.push(Connection { name, url });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn steps(&mut self, doc: &DeTable<'_>, doc_span: &Span, defaults: &Policy) -> Vec<Draft> {
        let Some(v) = doc.get("steps") else {
            self.err(
                doc_span,
                K::MissingKey,
                None,
                "the workflow has no steps: add [[steps]] tables",
            );
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, "steps", "an array of tables ([[steps]])", None);
            return Vec::new();
        };
        if items.is_empty() {
            self.err(&v.span(), K::MissingKey, None, "the workflow has no steps");
        }
        let mut drafts = Vec::new();
        for item in items.iter() {
            let DeValue::Table(t) = item.get_ref() else {
                self.wrong_type(item, "steps[]", "a table", None);
                continue;
            };
            if let Some(d) = self.step(t, item.span(), defaults) {
                drafts.push(d);
            }
        }
        drafts
    }

    fn step(&mut self, t: &DeTable<'_>, span: Span, defaults: &Policy) -> Option<Draft> {
        // The id first: every later diagnostic of this step names it.
        let (id, id_span) = match t.get("id") {
            None => {
                self.known_keys(t, STEP_KEYS, "step", None);
                self.err(&span, K::MissingKey, None, "step has no `id`");
                return None;
            }
            Some(v) => {
                let raw = self.string(v, "id", None)?;
                match StepId::new(&raw) {
                    Ok(id) => (id, v.span()),
                    Err(e) => {
                        self.err(&v.span(), K::InvalidId, None, e.to_string());
                        return None;
                    }
                }
            }
        };
        self.ids.push((id.clone(), id_span.clone()));
        let s = Some(&id);
        self.known_keys(t, STEP_KEYS, "step", s);
        let mut ok = true;

        let scope = match t.get("scope") {
            None => Scope::Target,
            Some(v) => match self.string(v, "scope", s).map(|raw| parse_scope(&raw)) {
                Some(Ok(sc)) => sc,
                Some(Err(msg)) => {
                    self.err(&v.span(), K::InvalidScope, s, msg);
                    ok = false;
                    Scope::Target
                }
                None => {
                    ok = false;
                    Scope::Target
                }
            },
        };

        let mut needs = Vec::new();
        let needs_span = t.get("needs").map_or(span.clone(), Spanned::span);
        if let Some(v) = t.get("needs") {
            match self.strings(v, "needs", s) {
                Some(list) => {
                    for (n, nspan) in list {
                        match StepId::new(&n) {
                            Ok(n) => needs.push((n, nspan)),
                            Err(e) => {
                                self.err(&nspan, K::InvalidId, s, format!("in `needs`: {e}"));
                                ok = false;
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }

        let resource = match t.get("resource") {
            None => None,
            Some(v) => match self.string(v, "resource", s).map(|r| PoolName::new(&r)) {
                Some(Ok(r)) => Some((r, v.span())),
                Some(Err(e)) => {
                    self.err(&v.span(), K::InvalidId, s, e.to_string());
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            },
        };

        let estimate = match t.get("estimate") {
            None => {
                self.err(
                    &span,
                    K::MissingKey,
                    s,
                    "no `estimate`: every step needs an expected duration such as \"2m\"",
                );
                None
            }
            Some(v) => self.duration(v, "estimate", s),
        };

        let mut when = Vec::new();
        if let Some(v) = t.get("when") {
            if let Some(w) = self.table(v, "when", s) {
                if scope != Scope::Target {
                    self.err(
                        &v.span(),
                        K::InvalidWhen,
                        s,
                        format!("`when` applies to target-scope steps only; this step's scope is {scope}"),
                    );
                    ok = false;
                }
                if w.is_empty() {
                    self.err(
                        &v.span(),
                        K::InvalidWhen,
                        s,
                        "`when` is empty: give at least one attribute = value",
                    );
                    ok = false;
                }
                for (key, val) in w.iter() {
                    let attr = match AttrName::new(key.get_ref()) {
                        Ok(a) => a,
                        Err(e) => {
                            self.err(&key.span(), K::InvalidId, s, format!("in `when`: {e}"));
                            ok = false;
                            continue;
                        }
                    };
                    match self.string(val, &format!("when.{attr}"), s) {
                        Some(value) => when.push(Condition { attr, value }),
                        None => ok = false,
                    }
                }
            } else {
                ok = false;
            }
        }

        let mut templates = Vec::new();
        let mut refs = Refs::default();
        let action = match t.get("action") {
            None => {
                self.err(&span, K::MissingKey, s, "no `action`: say what the step does, e.g. action = { kind = \"command\", program = \"...\" }");
                None
            }
            Some(v) => self.action(v, s, &mut templates, &mut refs),
        };

        let policy = self.policy(t, *defaults, s);
        let description = t.get("description").and_then(|v| self.string(v, "description", s));
        let queue = match t.get("queue") {
            None => None,
            Some(v) => match self.string(v, "queue", s) {
                Some(raw) if raw.trim().is_empty() => {
                    self.err(&v.span(), K::InvalidValue, s, "`queue` is empty: name a worker queue, e.g. \"us-east\" (without the key, the queue is \"default\")");
                    ok = false;
                    None
                }
                Some(raw) if raw.chars().any(char::is_control) => {
                    self.err(&v.span(), K::InvalidValue, s, "`queue` contains a newline or another control character: a queue name is one line");
                    ok = false;
                    None
                }
                Some(raw) => {
                    let q = self.template(&raw, v.span(), s, &mut templates);
                    ok &= q.is_some();
                    q
                }
                None => {
                    ok = false;
                    None
                }
            },
        };

        if !ok {
            return None;
        }
        Some(Draft {
            id,
            span,
            scope,
            needs,
            needs_span,
            resource,
            estimate: estimate?,
            when,
            action: action?,
            conn_refs: refs.connections,
            require_refs: refs.require,
            templates,
            policy,
            description,
            queue,
        })
    }

    fn template(
        &mut self,
        raw: &str,
        span: Span,
        step: Option<&StepId>,
        out: &mut Vec<(Template, Span)>,
    ) -> Option<Template> {
        match Template::parse(raw) {
            Ok(t) => {
                out.push((t.clone(), span));
                Some(t)
            }
            Err(e) => {
                self.err(&span, K::UnresolvedTemplate, step, e.message);
                None
            }
        }
    }

    fn action(
        &mut self,
        v: &Val<'_>,
        s: Option<&StepId>,
        templates: &mut Vec<(Template, Span)>,
        refs: &mut Refs,
    ) -> Option<Action> {
        let t = self.table(v, "action", s)?;
        let Some(kind_v) = t.get("kind") else {
            self.err(
                &v.span(),
                K::MissingKey,
                s,
                format!("action has no `kind` (one of: {})", ACTION_KINDS.join(", ")),
            );
            return None;
        };
        let kind = self.string(kind_v, "action.kind", s)?;
        match kind.as_str() {
            "command" => {
                self.known_keys(t, COMMAND_KEYS, "a command action", s);
                let mut ok = true;
                let program = match t.get("program") {
                    None => {
                        self.err(&v.span(), K::MissingKey, s, "command action has no `program`");
                        None
                    }
                    Some(p) => match self.string(p, "program", s) {
                        Some(raw) if raw.trim().is_empty() => {
                            self.err(&p.span(), K::InvalidValue, s, "`program` is empty");
                            None
                        }
                        Some(raw) => {
                            let program = self.template(&raw, p.span(), s, templates);
                            // The program comes from the workflow: a target attribute or an
                            // output naming it would run whatever the targets file says.
                            if let Some(ph) = program.as_ref().and_then(|t| t.placeholders().next())
                                && self.later_rule(
                                    &p.span(),
                                    K::TemplateInProgram,
                                    s,
                                    format!(
                                        "`program` must not be built from `{{{{{ph}}}}}`: the program comes from the workflow, never from targets or outputs; pass values as `args`"
                                    ),
                                )
                            {
                                ok = false;
                            }
                            program
                        }
                        None => None,
                    },
                };
                let mut args = Vec::new();
                if let Some(a) = t.get("args") {
                    match self.strings(a, "args", s) {
                        Some(list) => {
                            for (raw, span) in list {
                                match self.template(&raw, span, s, templates) {
                                    Some(t) => args.push(t),
                                    None => ok = false,
                                }
                            }
                        }
                        None => ok = false,
                    }
                }
                let mut env = BTreeMap::new();
                if let Some(e) = t.get("env") {
                    match self.table(e, "env", s) {
                        Some(et) => {
                            for (key, val) in et.iter() {
                                let k: &str = key.get_ref();
                                if !is_env_name(k) {
                                    self.err(
                                        &key.span(),
                                        K::InvalidId,
                                        s,
                                        format!("`{k}` is not an environment variable name"),
                                    );
                                    ok = false;
                                } else if k.starts_with("REWIND_") {
                                    self.err(
                                        &key.span(),
                                        K::InvalidValue,
                                        s,
                                        format!(
                                            "`{k}`: REWIND_* variables are set by rewind itself"
                                        ),
                                    );
                                    ok = false;
                                }
                                match self
                                    .string(val, &format!("env.{k}"), s)
                                    .and_then(|raw| self.template(&raw, val.span(), s, templates))
                                {
                                    Some(t) => {
                                        env.insert(k.to_owned(), t);
                                    }
                                    None => ok = false,
                                }
                            }
                        }
                        None => ok = false,
                    }
                }
                let program = program?;
                ok.then_some(Action::Command(CommandAction { program, args, env }))
            }
            "sql" => {
                self.known_keys(t, SQL_KEYS, "a sql action", s);
                let connection = self.connection_ref(t, "connection", &v.span(), "sql", s, refs);
                let statements = match (t.get("sql"), t.get("statements")) {
                    (Some(_), Some(st)) => {
                        self.err(
                            &st.span(),
                            K::InvalidValue,
                            s,
                            "give either `sql` (with `params`) or `statements`, not both",
                        );
                        None
                    }
                    (None, None) => {
                        self.err(
                            &v.span(),
                            K::MissingKey,
                            s,
                            "sql action has no `sql` statement (or `statements` list)",
                        );
                        None
                    }
                    (Some(_), None) => self.statement(t, s, templates).map(|st| vec![st]),
                    (None, Some(st)) => self.statements(st, s, templates),
                };
                if t.get("statements").is_some() && t.get("params").is_some() {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        s,
                        "`params` goes inside each of `statements`",
                    );
                    return None;
                }
                Some(Action::Sql(SqlAction { connection: connection?, statements: statements? }))
            }
            "copy" | "compare" => {
                let what = if kind == "copy" { "a copy action" } else { "a compare action" };
                self.known_keys(t, SLICE_KEYS, what, s);
                let from = self.connection_ref(t, "from", &v.span(), &kind, s, refs);
                let to = self.connection_ref(t, "to", &v.span(), &kind, s, refs);
                if let (Some(f), Some(to_name)) = (&from, &to)
                    && f == to_name
                {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        s,
                        format!("`from` and `to` are both `{f}`: a {kind} needs two connections"),
                    );
                    return None;
                }
                let root = match t.get("root") {
                    None => Some(None),
                    Some(r) => self.string(r, "root", s).and_then(|name| {
                        if is_identifier(&name) {
                            Some(Some(name))
                        } else {
                            self.err(&r.span(), K::InvalidId, s, identifier_rule("table", &name));
                            None
                        }
                    }),
                };
                let has_root = matches!(root, Some(Some(_)));
                let tables = match t.get("tables") {
                    None if has_root => Some(Vec::new()),
                    None => {
                        self.err(
                            &v.span(),
                            K::MissingKey,
                            s,
                            format!("{kind} action has no `root` and no `tables`"),
                        );
                        None
                    }
                    Some(tv) => self.table_list(tv, "tables", s),
                };
                let exclude = match t.get("exclude") {
                    None => Some(Vec::new()),
                    Some(ev) if !has_root => {
                        self.err(
                            &ev.span(),
                            K::InvalidValue,
                            s,
                            "`exclude` needs `root`: without it, the slice is exactly `tables`",
                        );
                        None
                    }
                    Some(ev) => self.table_list(ev, "exclude", s).and_then(|list| {
                        let mut ok = true;
                        for name in &list {
                            let clash = if root.as_ref().and_then(Option::as_ref) == Some(name) {
                                Some("is the root")
                            } else if tables.as_ref().is_some_and(|ts| ts.contains(name)) {
                                Some("is also listed in `tables`")
                            } else {
                                None
                            };
                            if let Some(why) = clash {
                                self.err(
                                    &ev.span(),
                                    K::InvalidValue,
                                    s,
                                    format!("`exclude` names `{name}`, which {why}"),
                                );
                                ok = false;
                            }
                        }
                        ok.then_some(list)
                    }),
                };
                let tenant_column = match t.get("tenant_column") {
                    None if has_root => Some(None),
                    None => {
                        self.err(
                            &v.span(),
                            K::MissingKey,
                            s,
                            format!("{kind} action has no `root` and no `tenant_column`"),
                        );
                        None
                    }
                    Some(c) => self.string(c, "tenant_column", s).and_then(|name| {
                        if is_identifier(&name) {
                            Some(Some(name))
                        } else {
                            self.err(&c.span(), K::InvalidId, s, identifier_rule("column", &name));
                            None
                        }
                    }),
                };
                let tenant = match t.get("tenant") {
                    None => {
                        self.err(
                            &v.span(),
                            K::MissingKey,
                            s,
                            format!("{kind} action has no `tenant`"),
                        );
                        None
                    }
                    Some(tv) => self
                        .string(tv, "tenant", s)
                        .and_then(|raw| self.template(&raw, tv.span(), s, templates)),
                };
                let as_tenant = match t.get("as") {
                    None => Some(None),
                    Some(av) => self
                        .string(av, "as", s)
                        .and_then(|raw| self.template(&raw, av.span(), s, templates))
                        .map(Some),
                };
                let source_restore_point = match t.get("source_restore_point") {
                    None => Some(None),
                    Some(q) => self.sql_text(q, "source_restore_point", s).map(Some),
                };
                let references = match t.get("references") {
                    None => Some(Vec::new()),
                    Some(rv) => self.references(rv, s),
                };
                let slice = SliceAction {
                    from: from?,
                    to: to?,
                    root: root?,
                    tables: tables?,
                    tenant_column: tenant_column?,
                    exclude: exclude?,
                    tenant: tenant?,
                    as_tenant: as_tenant?,
                    source_restore_point: source_restore_point?,
                    references: references?,
                };
                Some(if kind == "copy" { Action::Copy(slice) } else { Action::Compare(slice) })
            }
            "audit" => {
                self.known_keys(t, AUDIT_KEYS, "an audit action", s);
                let mut require = Vec::new();
                if let Some(r) = t.get("require") {
                    for (name, span) in self.strings(r, "require", s)? {
                        match StepId::new(&name) {
                            Ok(id) => {
                                refs.require.push((id.clone(), span));
                                require.push(id);
                            }
                            Err(e) => {
                                self.err(&span, K::InvalidId, s, format!("in `require`: {e}"));
                                return None;
                            }
                        }
                    }
                }
                Some(Action::Audit(AuditAction { require }))
            }
            "pitr" => {
                self.known_keys(t, PITR_KEYS, "a pitr action", s);
                self.pitr(t, v, s, templates).map(Action::Pitr)
            }
            other => {
                let hint = suggestion(other, ACTION_KINDS.iter().copied());
                self.err(
                    &kind_v.span(),
                    K::UnknownAction,
                    s,
                    format!(
                        "unknown action kind `{other}`{hint}; known kinds: {}",
                        ACTION_KINDS.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// The keys of a `pitr` action (unknown keys were reported by the caller).
    fn pitr(
        &mut self,
        t: &DeTable<'_>,
        v: &Val<'_>,
        s: Option<&StepId>,
        templates: &mut Vec<(Template, Span)>,
    ) -> Option<PitrAction> {
        const ENGINES: [&str; 2] = ["postgres", "mariadb"];
        let engine = match t.get("engine") {
            None => {
                self.err(
                    &v.span(),
                    K::MissingKey,
                    s,
                    "pitr action has no `engine` (postgres or mariadb)",
                );
                None
            }
            Some(e) => {
                let name = self.string(e, "engine", s)?;
                if ENGINES.contains(&name.as_str()) {
                    Some((name, e.span()))
                } else {
                    let hint = suggestion(&name, ENGINES.iter().copied());
                    self.err(
                        &e.span(),
                        K::InvalidValue,
                        s,
                        format!(
                            "unknown pitr engine `{name}`{hint}; known engines: postgres, mariadb"
                        ),
                    );
                    None
                }
            }
        };
        let method = match t.get("method") {
            None => {
                self.err(
                    &v.span(),
                    K::MissingKey,
                    s,
                    "pitr action has no `method` (archive, pgbackrest or binlog)",
                );
                None
            }
            Some(m) => {
                let name = self.string(m, "method", s)?;
                match PITR_METHODS.iter().find(|(n, _, _)| *n == name) {
                    Some(found) => Some((found, m.span())),
                    None => {
                        let hint = suggestion(&name, PITR_METHODS.iter().map(|(n, _, _)| *n));
                        self.err(
                            &m.span(),
                            K::InvalidValue,
                            s,
                            format!("unknown pitr method `{name}`{hint}; known methods: archive, pgbackrest (postgres), binlog (mariadb)"),
                        );
                        None
                    }
                }
            }
        };
        let ((engine, _), ((method, method_engine, keys), method_span)) = (engine?, method?);
        if engine != *method_engine {
            self.err(
                &method_span,
                K::InvalidValue,
                s,
                format!("method `{method}` restores {method_engine}, not {engine}"),
            );
            return None;
        }
        // Keys of the other methods are mistakes, not options.
        let mut ok = true;
        for (other, other_engine, other_keys) in PITR_METHODS {
            for k in other_keys {
                if !keys.contains(k)
                    && let Some(val) = t.get(*k)
                {
                    self.err(
                        &val.span(),
                        K::InvalidValue,
                        s,
                        format!(
                            "`{k}` belongs to method `{other}` ({other_engine}), not `{method}`"
                        ),
                    );
                    ok = false;
                }
            }
        }
        let mut path = |this: &mut Self, key: &str| -> Option<Template> {
            match t.get(key) {
                None => {
                    this.err(
                        &v.span(),
                        K::MissingKey,
                        s,
                        format!("pitr action (method {method}) has no `{key}`"),
                    );
                    None
                }
                Some(p) => {
                    let raw = this.string(p, key, s)?;
                    if raw.trim().is_empty() {
                        this.err(&p.span(), K::InvalidValue, s, format!("`{key}` is empty"));
                        return None;
                    }
                    this.template(&raw, p.span(), s, templates)
                }
            }
        };
        let first = path(self, keys[0]);
        let second = path(self, keys[1]);
        let into = path(self, "into");
        let run_as = match t.get("run_as") {
            None => Some(None),
            Some(r) => self.string(r, "run_as", s).and_then(|u| {
                let valid = !u.is_empty()
                    && u.len() <= 32
                    && u.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && u.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    });
                if !valid {
                    self.err(
                        &r.span(),
                        K::InvalidValue,
                        s,
                        format!(
                            "`run_as` `{u}` is not a user name ([a-z_][a-z0-9_-]*, at most 32)"
                        ),
                    );
                    None
                } else if u == "root" {
                    self.err(
                        &r.span(),
                        K::InvalidValue,
                        s,
                        "`run_as` = root: database servers refuse to run as root",
                    );
                    None
                } else {
                    Some(Some(u))
                }
            }),
        };
        let (first, second, into, run_as) = (first?, second?, into?, run_as?);
        if !ok {
            return None;
        }
        let method = match *method {
            "archive" => PitrMethod::Archive { base_backup: first, wal_archive: second },
            "pgbackrest" => PitrMethod::Pgbackrest { stanza: first, config: second },
            _ => PitrMethod::Binlog { base_backup: first, binlogs: second },
        };
        Some(PitrAction { method, into, run_as })
    }

    /// A connection named under `key`, recorded for the cross-checks.
    fn connection_ref(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        at: &Span,
        kind: &str,
        s: Option<&StepId>,
        refs: &mut Refs,
    ) -> Option<ConnectionName> {
        let Some(c) = t.get(key) else {
            self.err(at, K::MissingKey, s, format!("{kind} action has no `{key}` connection"));
            return None;
        };
        match self.string(c, key, s).map(|n| ConnectionName::new(&n)) {
            Some(Ok(n)) => {
                refs.connections.push((n.clone(), c.span()));
                Some(n)
            }
            Some(Err(e)) => {
                self.err(&c.span(), K::InvalidId, s, e.to_string());
                None
            }
            None => None,
        }
    }

    /// SQL text: a string, not empty, with no `{{` (values are bound, never spliced).
    fn sql_text(&mut self, q: &Val<'_>, key: &str, s: Option<&StepId>) -> Option<String> {
        let text = self.string(q, key, s)?;
        if let Some(at) = text.find("{{") {
            let end = text[at..].find("}}").map_or(text.len(), |e| at + e + 2);
            self.err(
                &q.span(),
                K::TemplateInSql,
                s,
                format!(
                    "`{}` inside SQL text: values must be bound, never spliced; write a parameter \
                     (`?` or `$1`) and add the template to `params`",
                    &text[at..end]
                ),
            );
            return None;
        }
        if text.trim().is_empty() {
            self.err(&q.span(), K::InvalidValue, s, format!("`{key}` is empty"));
            return None;
        }
        Some(text)
    }

    /// `sql` and `params` of a table (the action itself, or one of `statements`).
    fn statement(
        &mut self,
        t: &DeTable<'_>,
        s: Option<&StepId>,
        templates: &mut Vec<(Template, Span)>,
    ) -> Option<Statement> {
        let sql = t.get("sql").and_then(|q| self.sql_text(q, "sql", s));
        let mut params = Vec::new();
        let mut ok = true;
        if let Some(p) = t.get("params") {
            match self.strings(p, "params", s) {
                Some(list) => {
                    for (raw, span) in list {
                        match self.template(&raw, span, s, templates) {
                            Some(t) => params.push(t),
                            None => ok = false,
                        }
                    }
                }
                None => ok = false,
            }
        }
        let sql = sql?;
        ok.then_some(Statement { sql, params })
    }

    fn statements(
        &mut self,
        v: &Val<'_>,
        s: Option<&StepId>,
        templates: &mut Vec<(Template, Span)>,
    ) -> Option<Vec<Statement>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(
                v,
                "statements",
                "an array of tables { sql = \"...\", params = [...] }",
                s,
            );
            return None;
        };
        if items.is_empty() {
            self.err(&v.span(), K::InvalidValue, s, "`statements` is empty");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            let Some(t) = self.table(item, "statements[]", s) else {
                ok = false;
                continue;
            };
            self.known_keys(t, STATEMENT_KEYS, "a statement", s);
            if t.get("sql").is_none() {
                self.err(&item.span(), K::MissingKey, s, "statement has no `sql`");
                ok = false;
                continue;
            }
            match self.statement(t, s, templates) {
                Some(st) => out.push(st),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Checks what refers across steps; returns a topological order when the steps form a DAG.
    fn cross_check(
        &mut self,
        drafts: &[Draft],
        pools: &[&PoolName],
        conns: &[Connection],
    ) -> Option<Vec<usize>> {
        let ids = std::mem::take(&mut self.ids);
        let mut first_seen: HashMap<&StepId, &Span> = HashMap::new();
        for (id, span) in &ids {
            if let Some(first) = first_seen.get(id) {
                let line = self.sink.location(first).line;
                self.err(
                    span,
                    K::DuplicateStep,
                    Some(id),
                    format!("duplicate step id; first defined on line {line}"),
                );
            } else {
                first_seen.insert(id, span);
            }
        }
        let mut index: HashMap<&StepId, usize> = HashMap::new();
        for (i, d) in drafts.iter().enumerate() {
            index.entry(&d.id).or_insert(i);
        }
        let all_ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
        for (i, d) in drafts.iter().enumerate() {
            let s = Some(&d.id);
            let mut seen: Vec<&StepId> = Vec::new();
            for (n, span) in &d.needs {
                if seen.contains(&n) {
                    self.err(span, K::DuplicateNeed, s, format!("`{n}` appears twice in `needs`"));
                    continue;
                }
                seen.push(n);
                if n == &d.id {
                    self.err(span, K::Cycle, s, "the step needs itself");
                    continue;
                }
                match index.get(n) {
                    Some(&j) => edges[i].push(j),
                    // Known, but the step itself has mistakes (already reported).
                    None if first_seen.contains_key(n) => {}
                    None => {
                        let hint = suggestion(n.as_str(), all_ids.iter().copied());
                        self.err(
                            span,
                            K::UnknownNeed,
                            s,
                            format!("needs unknown step `{n}`{hint}"),
                        );
                    }
                }
            }
            if let Some((r, span)) = &d.resource
                && !pools.contains(&r)
            {
                let names: Vec<&str> = pools.iter().map(|p| p.as_str()).collect();
                let hint = suggestion(r.as_str(), names.iter().copied());
                let declared = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
                self.err(
                    span,
                    K::UnknownResource,
                    s,
                    format!("unknown resource `{r}`{hint}; [resources] declares: {declared}"),
                );
            }
            for (name, span) in &d.conn_refs {
                let Some(conn) = conns.iter().find(|c| &c.name == name) else {
                    let names: Vec<&str> = conns.iter().map(|c| c.name.as_str()).collect();
                    let hint = suggestion(name.as_str(), names.iter().copied());
                    let declared =
                        if names.is_empty() { "none".to_owned() } else { names.join(", ") };
                    self.err(
                        span,
                        K::UnknownConnection,
                        s,
                        format!(
                            "unknown connection `{name}`{hint}; [connections] declares: {declared}"
                        ),
                    );
                    continue;
                };
                for p in conn.url.placeholders() {
                    if let Err(msg) =
                        resolvable(p, d, |id| first_seen.contains_key(id), &index, drafts)
                    {
                        self.err(
                            span,
                            K::UnresolvedTemplate,
                            s,
                            format!("connection `{name}`: {msg}"),
                        );
                    }
                }
            }
            for (req, span) in &d.require_refs {
                if !d.needs.iter().any(|(n, _)| n == req) {
                    self.err(
                        span,
                        K::InvalidValue,
                        s,
                        format!("the audit requires `{req}`, which is not in this step's `needs`"),
                    );
                    continue;
                }
                let p = Placeholder::Needs { step: req.clone(), key: "restore_point".to_owned() };
                if let Err(msg) =
                    resolvable(&p, d, |id| first_seen.contains_key(id), &index, drafts)
                {
                    self.err(
                        span,
                        K::InvalidValue,
                        s,
                        format!("the audit cannot read `{req}`: {msg}"),
                    );
                }
            }
            for (t, span) in &d.templates {
                for p in t.placeholders() {
                    if let Err(msg) =
                        resolvable(p, d, |id| first_seen.contains_key(id), &index, drafts)
                    {
                        self.err(span, K::UnresolvedTemplate, s, msg);
                    }
                }
            }
        }
        self.cycles(drafts, &edges)?;
        Some(topological(&edges))
    }

    /// Reports each dependency cycle once, with its path. `None` when there is one.
    fn cycles(&mut self, drafts: &[Draft], needs: &[Vec<usize>]) -> Option<()> {
        let mut graph = petgraph::graph::DiGraph::<usize, ()>::new();
        let nodes: Vec<_> = (0..drafts.len()).map(|i| graph.add_node(i)).collect();
        for (i, ns) in needs.iter().enumerate() {
            for &j in ns {
                graph.add_edge(nodes[j], nodes[i], ());
            }
        }
        let mut found = false;
        for scc in petgraph::algo::tarjan_scc(&graph) {
            if scc.len() < 2 {
                continue;
            }
            found = true;
            let members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            let start = members.iter().copied().min().unwrap_or(0);
            let path = cycle_path(start, &members, needs);
            let text: Vec<&str> = path.iter().map(|&i| drafts[i].id.as_str()).collect();
            let d = &drafts[start];
            self.err(
                &d.needs_span,
                K::Cycle,
                Some(&d.id),
                format!("dependency cycle: {}", text.join(" → ")),
            );
        }
        (!found).then_some(())
    }
}

/// A cycle through `start` inside one strongly connected component, closed (`a → b → a`), in the
/// direction of `needs` (each step followed by one it needs).
fn cycle_path(start: usize, members: &[usize], needs: &[Vec<usize>]) -> Vec<usize> {
    // Breadth-first search from `start` back to `start` along `needs`, inside the component.
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in &needs[n] {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                let mut path = vec![start];
                let mut cur = n;
                while cur != start {
                    path.push(cur);
                    cur = prev[&cur];
                }
                path.push(start);
                let len = path.len();
                path[1..len - 1].reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    vec![start, start]
}

/// Kahn's algorithm, preferring file order among ready steps.
fn topological(needs: &[Vec<usize>]) -> Vec<usize> {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); needs.len()];
    let mut missing: Vec<usize> = needs.iter().map(Vec::len).collect();
    for (i, ns) in needs.iter().enumerate() {
        for &j in ns {
            dependents[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..needs.len()).filter(|&i| missing[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(needs.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            missing[d] -= 1;
            if missing[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    order
}

fn parse_scope(raw: &str) -> Result<Scope, String> {
    match raw {
        "run" => Ok(Scope::Run),
        "target" => Ok(Scope::Target),
        _ => match raw.strip_prefix("group:") {
            Some(attr) => {
                AttrName::new(attr).map(Scope::Group).map_err(|e| format!("scope {raw:?}: {e}"))
            }
            None => Err(format!(
                "scope {raw:?} is not one of \"run\", \"target\" or \"group:<attribute>\"{}",
                suggestion(raw, ["run", "target"])
            )),
        },
    }
}

/// A table or column name rewind may quote into SQL: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn is_identifier(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

pub(super) fn identifier_rule(what: &str, name: &str) -> String {
    format!(
        "{what} name {name:?} is not valid: use letters, digits and '_', starting with a letter or '_' (at most 63)"
    )
}

fn is_env_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Whether placeholder `p` has exactly one value for every instance of step `d`.
fn resolvable(
    p: &Placeholder,
    d: &Draft,
    known: impl Fn(&StepId) -> bool,
    index: &HashMap<&StepId, usize>,
    drafts: &[Draft],
) -> Result<(), String> {
    let scope = &d.scope;
    match p {
        Placeholder::TargetId | Placeholder::TargetKind | Placeholder::TargetAttr(_) => match scope
        {
            Scope::Target => Ok(()),
            Scope::Run => Err(format!(
                "`{{{{{p}}}}}` cannot resolve in a run-scope step: it has no single target"
            )),
            Scope::Group(_) => Err(format!(
                "`{{{{{p}}}}}` cannot resolve in a {scope} step: it covers many targets; use `{{{{group.value}}}}`"
            )),
        },
        Placeholder::GroupValue => match scope {
            Scope::Group(_) => Ok(()),
            _ => Err(format!(
                "`{{{{group.value}}}}` cannot resolve in a {scope}-scope step: it belongs to group: scopes"
            )),
        },
        Placeholder::RunId
        | Placeholder::RestorePoint
        | Placeholder::StepId
        | Placeholder::Attempt => Ok(()),
        Placeholder::Needs { step, .. } => {
            if !d.needs.iter().any(|(n, _)| n == step) {
                return Err(if known(step) {
                    format!(
                        "`{{{{{p}}}}}` reads step `{step}`, which is not in this step's `needs`"
                    )
                } else {
                    format!("`{{{{{p}}}}}` reads unknown step `{step}`")
                });
            }
            let Some(&j) = index.get(step) else { return Ok(()) };
            let dep = &drafts[j].scope;
            let unique = match (scope, dep) {
                (_, Scope::Run) | (Scope::Target, Scope::Target | Scope::Group(_)) => true,
                (Scope::Group(a), Scope::Group(b)) => a == b,
                _ => false,
            };
            if unique {
                Ok(())
            } else {
                Err(format!(
                    "`{{{{{p}}}}}` is ambiguous: a {scope}-scope step depends on many instances of `{step}` (scope {dep})"
                ))
            }
        }
    }
}
