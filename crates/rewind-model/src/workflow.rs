//! The workflow: a TOML template of steps, their dependencies, scopes, resources, estimates, retry
//! policy and actions (DESIGN.md "Workflow file"). [`Workflow::parse`] reads and validates one;
//! a `Workflow` value is always valid.

pub(crate) mod parse;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::ids::{AttrName, ConnectionName, PoolName, StepId, TargetKind};
use crate::template::{Placeholder, Template, UrlTemplate};

/// A validated workflow.
#[derive(Clone, Debug, Serialize)]
pub struct Workflow {
    /// `name`
    pub name: String,
    /// `target_kind`: targets of any other kind are refused.
    pub target_kind: TargetKind,
    /// `description`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `[defaults]`, with rewind's built-in values for what the file leaves out.
    pub defaults: Policy,
    /// `[resources]`, in file order.
    pub resources: Vec<Pool>,
    /// `[connections]`, in file order. URLs are templates: `${VAR}` references to the
    /// environment and `{{...}}` placeholders, rendered per instance at run time.
    pub connections: Vec<Connection>,
    /// `[[steps]]`, in file order.
    pub steps: Vec<Step>,
    /// `retention`: how far back the backups reach. A real run refuses a restore point older
    /// than this (default 30 days).
    #[serde(with = "crate::duration_serde", skip_serializing_if = "is_default_retention")]
    pub retention: Duration,
    /// `[preflight]`: how to learn what each target really is before anything runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Preflight>,
    /// Indices into `steps`, dependencies before dependents, file order among equals.
    #[serde(skip)]
    pub(crate) topo: Vec<usize>,
    /// Per step, the indices of the steps it needs.
    #[serde(skip)]
    pub(crate) need_idx: Vec<Vec<usize>>,
}

/// The default `retention`: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

fn is_default_retention(d: &Duration) -> bool {
    *d == DEFAULT_RETENTION
}

/// `[preflight]`: a resolver that maps every target ID to its actual kind and state, run before
/// a real run is created. A `sql` query runs once per target (its templates may read
/// `{{target.*}}`, bound as parameters) and returns no row for an unknown ID, or one row with
/// columns `kind` and `state`. A `command` runs once with the target IDs on stdin, one per
/// line, and prints one JSON object per known ID: `{"id": .., "kind": .., "state": ..}`.
#[derive(Clone, Debug, Serialize)]
pub struct Preflight {
    /// `state`: the state every target must be in (for example `deleted`); any state when
    /// `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The resolver: a `sql` or `command` action.
    pub action: Action,
    /// Longest the whole preflight may take (default 5 minutes).
    #[serde(with = "crate::duration_serde")]
    pub timeout: Duration,
    /// Line of `[preflight]` in the workflow file.
    #[serde(skip)]
    pub line: u32,
}

/// Timeout and retry policy of a step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// Longest one attempt may run before it is killed and counted as failed.
    #[serde(with = "crate::duration_serde")]
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
}

impl Policy {
    /// rewind's built-in defaults: 30 minute timeout, 2 retries, backoff 5 s doubling to 5 min
    /// with jitter.
    pub const BUILT_IN: Self = Self {
        timeout: Duration::from_secs(30 * 60),
        retries: 2,
        backoff: Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(5 * 60),
            factor: 2.0,
            jitter: true,
        },
    };
}

/// Exponential backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Backoff {
    /// Delay before the first retry.
    #[serde(with = "crate::duration_serde")]
    pub initial: Duration,
    /// Upper bound of the delay (before jitter).
    #[serde(with = "crate::duration_serde")]
    pub max: Duration,
    /// Growth per retry (≥ 1).
    pub factor: f32,
    /// Add up to one delay of seeded random jitter.
    pub jitter: bool,
}

/// A named resource pool: at most `capacity` instances using it run at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// Pool name.
    pub name: PoolName,
    /// Concurrent slots, at least 1.
    pub capacity: u32,
}

/// A database connection used by `sql`, `copy` and `compare` actions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// Connection name.
    pub name: ConnectionName,
    /// URL template (`sqlite://...`, `postgres://...`, or a URL a resolver maps to one), with
    /// each placeholder placed in its URL component.
    pub url: UrlTemplate,
}

/// What a step is instantiated over.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Once per run.
    Run,
    /// Once per target.
    Target,
    /// Once per distinct value of a target attribute.
    Group(AttrName),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run => f.write_str("run"),
            Self::Target => f.write_str("target"),
            Self::Group(a) => write!(f, "group:{a}"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `when` condition: the target attribute equals the value, or (a list attribute) contains it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Attribute tested.
    pub attr: AttrName,
    /// Value required.
    pub value: String,
}

/// One step of the workflow.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Unique id.
    pub id: StepId,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What the step is instantiated over.
    pub scope: Scope,
    /// Steps that must be satisfied first.
    pub needs: Vec<StepId>,
    /// Pool the step's instances draw a slot from.
    pub resource: Option<PoolName>,
    /// Expected duration of one attempt: priority, ETA, simulation.
    #[serde(with = "crate::duration_serde")]
    pub estimate: Duration,
    /// All must hold for a target, or its instance is skipped (target scope only).
    pub when: Vec<Condition>,
    /// What the step does.
    pub action: Action,
    /// Timeout and retries (the workflow's defaults, overridden by the step).
    pub policy: Policy,
    /// The worker queue its attempts go to under `run --dispatch workers` (a template; `None`:
    /// the queue `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Template>,
    /// Line of the step's `[[steps]]` table in the workflow file.
    #[serde(skip)]
    pub line: u32,
}

/// What a step does.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Run a program with an argument array (no shell).
    Command(CommandAction),
    /// Run statements against a named connection, template values bound as parameters.
    Sql(SqlAction),
    /// Copy one tenant's rows of some tables from one connection to another, idempotently.
    Copy(SliceAction),
    /// Check that one tenant's rows of some tables are the same on two connections.
    Compare(SliceAction),
    /// Check that every dependency that reported a restore point reported the run's.
    Audit(AuditAction),
    /// Bring up a scratch database instance recovered to exactly the run's restore point.
    Pitr(PitrAction),
}

impl Action {
    /// The action kind as written in the workflow.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Command(_) => "command",
            Self::Sql(_) => "sql",
            Self::Copy(_) => "copy",
            Self::Compare(_) => "compare",
            Self::Audit(_) => "audit",
            Self::Pitr(_) => "pitr",
        }
    }

    /// Every template of the action itself (not of the connections it uses).
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            Self::Command(c) => {
                std::iter::once(&c.program).chain(&c.args).chain(c.env.values()).collect()
            }
            Self::Sql(s) => s.statements.iter().flat_map(|st| &st.params).collect(),
            Self::Copy(c) | Self::Compare(c) => {
                std::iter::once(&c.tenant).chain(&c.as_tenant).collect()
            }
            Self::Audit(_) => Vec::new(),
            Self::Pitr(p) => p.templates(),
        }
    }

    /// The connections the action uses.
    pub fn connections(&self) -> Vec<&ConnectionName> {
        match self {
            Self::Sql(s) => vec![&s.connection],
            Self::Copy(c) | Self::Compare(c) => vec![&c.from, &c.to],
            Self::Command(_) | Self::Audit(_) | Self::Pitr(_) => Vec::new(),
        }
    }

    /// The store the action writes to, as `rewind plan` groups them: a `copy` its `to`
    /// connection, a `sql` its connection, a `pitr` its scratch instance; a command writes to
    /// nothing rewind knows of, and a `compare` or an audit writes nothing.
    pub fn writes_to(&self) -> WritesTo {
        match self {
            Self::Sql(s) => WritesTo::Connection(s.connection.to_string()),
            Self::Copy(c) => WritesTo::Connection(c.to.to_string()),
            Self::Pitr(p) => WritesTo::Scratch(format!("pitr scratch {}", p.into)),
            Self::Command(_) => WritesTo::Unknown,
            Self::Compare(_) | Self::Audit(_) => WritesTo::Nothing,
        }
    }

    /// One line saying what the action touches (`command examples/bin/restore-step`,
    /// `sql on catalog`, `copy tracker_scratch -> tracker (3 tables)`).
    pub fn describe(&self) -> String {
        match self {
            Self::Command(c) => format!("command {}", c.program),
            Self::Sql(s) => format!("sql on {}", s.connection),
            Self::Copy(c) => format!("copy {} -> {} ({})", c.from, c.to, c.extent()),
            Self::Compare(c) => {
                format!("compare {} with {} ({})", c.to, c.from, c.extent())
            }
            Self::Audit(_) => "audit of restore points".to_owned(),
            Self::Pitr(p) => format!("pitr {} {} into {}", p.engine(), p.method.name(), p.into),
        }
    }
}

/// Where an action writes ([`Action::writes_to`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WritesTo {
    /// A connection of the workflow, by name.
    Connection(String),
    /// A `pitr` action's scratch instance, by its `into` template.
    Scratch(String),
    /// A command: what it writes to is not known to rewind.
    Unknown,
    /// Only reads or checks (`compare`, `audit`).
    Nothing,
}

impl WritesTo {
    /// The name `rewind plan` shows: the connection, `pitr scratch INTO`, `(commands: not
    /// known)`, `(nothing: reads and checks)`.
    pub fn name(&self) -> String {
        match self {
            Self::Connection(c) | Self::Scratch(c) => c.clone(),
            Self::Unknown => "(commands: not known)".to_owned(),
            Self::Nothing => "(nothing: reads and checks)".to_owned(),
        }
    }

    /// `connection`, `scratch`, `unknown` or `nothing`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connection(_) => "connection",
            Self::Scratch(_) => "scratch",
            Self::Unknown => "unknown",
            Self::Nothing => "nothing",
        }
    }
}

/// `kind = "pitr"`: a scratch database instance recovered from backups to exactly the run's
/// restore point (`rewind-pitr`). Paths are templates; a relative path is read against the
/// workflow file's folder.
#[derive(Clone, Debug, Serialize)]
pub struct PitrAction {
    /// What to recover from (and so the engine).
    pub method: PitrMethod,
    /// The scratch directory the instance lives in.
    pub into: Template,
    /// The OS user the server runs as (default `postgres` / `mariadb`'s `mysql` when rewind
    /// runs as root).
    pub run_as: Option<String>,
}

impl PitrAction {
    /// `postgres` or `mariadb`.
    pub fn engine(&self) -> &'static str {
        match self.method {
            PitrMethod::Archive { .. } | PitrMethod::Pgbackrest { .. } => "postgres",
            PitrMethod::Binlog { .. } => "mariadb",
        }
    }

    fn templates(&self) -> Vec<&Template> {
        let mut v = match &self.method {
            PitrMethod::Archive { base_backup, wal_archive } => vec![base_backup, wal_archive],
            PitrMethod::Pgbackrest { stanza, config } => vec![stanza, config],
            PitrMethod::Binlog { base_backup, binlogs } => vec![base_backup, binlogs],
        };
        v.push(&self.into);
        v
    }
}

/// `method` of a `pitr` action, with its keys.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum PitrMethod {
    /// PostgreSQL: a `pg_basebackup` directory and the WAL archive an `archive_command` fills.
    Archive {
        /// The base backup directory.
        base_backup: Template,
        /// The WAL archive directory.
        wal_archive: Template,
    },
    /// PostgreSQL: a pgBackRest stanza.
    Pgbackrest {
        /// The stanza.
        stanza: Template,
        /// pgBackRest's configuration file.
        config: Template,
    },
    /// MariaDB: a `mariadb-backup` directory and the binlogs after it.
    Binlog {
        /// The backup directory.
        base_backup: Template,
        /// The binlog directory.
        binlogs: Template,
    },
}

impl PitrMethod {
    /// As written in the workflow.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Archive { .. } => "archive",
            Self::Pgbackrest { .. } => "pgbackrest",
            Self::Binlog { .. } => "binlog",
        }
    }
}

/// `kind = "command"`
#[derive(Clone, Debug, Serialize)]
pub struct CommandAction {
    /// Program: a path relative to the workflow file's folder when it contains `/`, else looked
    /// up in `PATH`.
    pub program: Template,
    /// Arguments, one template each.
    pub args: Vec<Template>,
    /// Extra environment variables.
    pub env: BTreeMap<String, Template>,
}

/// `kind = "sql"`: one statement (`sql`, `params`) or several (`statements`), in one
/// transaction.
#[derive(Clone, Debug, Serialize)]
pub struct SqlAction {
    /// Connection name from `[connections]`.
    pub connection: ConnectionName,
    /// The statements, in order.
    pub statements: Vec<Statement>,
}

/// One SQL statement and its bound parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Statement {
    /// Statement text with `?` / `$N` parameters; never holds `{{`.
    pub sql: String,
    /// Bound parameters, one template each, bound as text.
    pub params: Vec<Template>,
}

/// `kind = "copy"` and `kind = "compare"`: one tenant's slice of a store.
///
/// With `root`, the slice is the root table's row whose primary key is the tenant, and every
/// row that reaches it through foreign keys, discovered from the catalog at run time
/// (`rewind-slice`); `tables` then restricts the discovered tables or adds tables that carry
/// `tenant_column` without a foreign key, and `exclude` leaves tables out. Without `root`, the
/// slice is the rows of `tables` whose `tenant_column` is the tenant. Either way the order of
/// deletes and inserts comes from the foreign keys, not from the order of `tables`.
#[derive(Clone, Debug, Serialize)]
pub struct SliceAction {
    /// Source connection (the scratch copy at the restore point).
    pub from: ConnectionName,
    /// Destination connection (the live store).
    pub to: ConnectionName,
    /// The tenant root table: its primary key holds the tenant id.
    pub root: Option<String>,
    /// Tables (empty: every table the root reaches).
    pub tables: Vec<String>,
    /// The column holding the tenant in `tables` reached without a foreign key; required
    /// without `root`.
    pub tenant_column: Option<String>,
    /// Tables left out of the slice (with `root`).
    pub exclude: Vec<String>,
    /// The tenant whose rows are copied or compared.
    pub tenant: Template,
    /// `as`: restore as a new tenant. `copy` writes the tenant's slice under this id, every
    /// key of the slice remapped (the root key to this id, uuid keys derived from it, integer
    /// keys drawn from the destination's sequences and kept in its `rewind_key_map`), every
    /// foreign key following its parent; `compare` compares remap-aware. `None`: the tenant
    /// is restored as itself.
    #[serde(rename = "as")]
    pub as_tenant: Option<Template>,
    /// A query on the source whose first column of the first row is the restore point the
    /// source reached; reported as `restore_point`, so the run's pin applies.
    pub source_restore_point: Option<String>,
    /// `references`: foreign keys the catalog lacks (a schema whose references are logical,
    /// without FOREIGN KEY constraints), each counted like the catalog's for discovery, order
    /// and `as` (where a reference follows its parent's new key), but never checked as a
    /// constraint. Empty: the catalog's alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

/// One item of `references`: `columns` of `child` hold the values of `parent_columns` of
/// `parent`, written `"child(column, …) -> parent(column, …)"` (whitespace free). Parsed by
/// [`Reference::from_str`]: both tables and every column an identifier, as many columns on each
/// side, none twice on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The referring table.
    pub child: String,
    /// Its columns, in pair order.
    pub columns: Vec<String>,
    /// The referred table.
    pub parent: String,
    /// Its columns, one per column of `columns`.
    pub parent_columns: Vec<String>,
}

impl Reference {
    /// Whether `other` is the same reference, its column pairs perhaps in another order.
    pub fn same_as(&self, other: &Self) -> bool {
        let pairs = |r: &Self| {
            let mut p: Vec<(String, String)> =
                r.columns.iter().cloned().zip(r.parent_columns.iter().cloned()).collect();
            p.sort();
            p
        };
        self.child == other.child && self.parent == other.parent && pairs(self) == pairs(other)
    }
}

/// `issues(project_id) -> projects(id)`, `a(x, y) -> b(p, q)`: the canonical spelling.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({}) -> {}({})",
            self.child,
            self.columns.join(", "),
            self.parent,
            self.parent_columns.join(", ")
        )
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `"child(column, …) -> parent(column, …)"`; the error says what is wrong, without the
/// text itself (the caller quotes it).
impl std::str::FromStr for Reference {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("it is empty".to_owned());
        }
        let Some((left, right)) = text.split_once("->") else {
            return Err("it has no `->` between the referring and the referred table".to_owned());
        };
        if right.contains("->") {
            return Err("it has more than one `->`".to_owned());
        }
        let (child, columns) = reference_side(left, "referring")?;
        let (parent, parent_columns) = reference_side(right, "referred")?;
        if columns.len() != parent_columns.len() {
            return Err(format!(
                "{} column(s) of `{child}` refer to {} column(s) of `{parent}`: each column \
                 refers to one",
                columns.len(),
                parent_columns.len()
            ));
        }
        Ok(Self { child, columns, parent, parent_columns })
    }
}

/// One side of a reference, `table(column, …)`; `role` names it in errors.
fn reference_side(text: &str, role: &str) -> Result<(String, Vec<String>), String> {
    let text = text.trim();
    let shape = || format!("the {role} side {text:?} is not `table(column, …)`");
    let (Some(open), true) = (text.find('('), text.ends_with(')')) else {
        return Err(shape());
    };
    let table = text[..open].trim();
    let inner = &text[open + 1..text.len() - 1];
    if inner.contains(['(', ')']) {
        return Err(shape());
    }
    if !parse::is_identifier(table) {
        return Err(parse::identifier_rule("table", table));
    }
    let mut columns: Vec<String> = Vec::new();
    for column in inner.split(',').map(str::trim) {
        if column.is_empty() {
            return Err(format!("the {role} side {text:?} has an empty column name"));
        }
        if !parse::is_identifier(column) {
            return Err(parse::identifier_rule("column", column));
        }
        if columns.iter().any(|c| c == column) {
            return Err(format!("the {role} side {text:?} names column `{column}` twice"));
        }
        columns.push(column.to_owned());
    }
    Ok((table.to_owned(), columns))
}

impl SliceAction {
    /// `3 tables`, or `root sites` (with `, 2 tables`/`, 1 excluded` when restricted).
    pub fn extent(&self) -> String {
        let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
        match &self.root {
            None => n(self.tables.len(), "table"),
            Some(root) => {
                let mut out = format!("root {root}");
                if !self.tables.is_empty() {
                    out.push_str(&format!(", {}", n(self.tables.len(), "table")));
                }
                if !self.exclude.is_empty() {
                    out.push_str(&format!(", {} excluded", self.exclude.len()));
                }
                out
            }
        }
    }
}

/// `kind = "audit"`
#[derive(Clone, Debug, Serialize)]
pub struct AuditAction {
    /// Dependencies that must have reported a restore point (unless skipped by `when`).
    pub require: Vec<StepId>,
}

/// Why the targets of a plan must carry an attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeUse {
    /// The attribute.
    pub attr: AttrName,
    /// The step that needs it.
    pub step: StepId,
    /// How: `scope group:shard`, `when`, `template {{target.attr.x}}`.
    pub how: String,
}

impl Workflow {
    /// Parses and validates a workflow. `file` names the source in diagnostics; no file is read.
    pub fn parse(file: &str, text: &str) -> Result<Self, crate::Diagnostics> {
        parse::parse(file, text)
    }

    /// Parses the workflow snapshot of a stored run. The rules added after rewind 0.1 (literal
    /// passwords in connection URLs, `{{…}}` in a `program`, a preflight of several statements)
    /// do not refuse it: an earlier release accepted it, and its run must still load. What they
    /// would have refused is returned beside the workflow. (Whoever runs it must refuse what is
    /// unsafe to run: see [`Workflow::templated_programs`].)
    pub fn parse_snapshot(
        file: &str,
        text: &str,
    ) -> Result<(Self, Vec<String>), crate::Diagnostics> {
        parse::parse_as(file, text, parse::Rules::Snapshot)
    }

    /// Steps whose `program` is built from a placeholder (only a stored run of an earlier
    /// release can have one): running them would start a program the targets or an output name.
    pub fn templated_programs(&self) -> Vec<&StepId> {
        let templated = |a: &Action| match a {
            Action::Command(c) => c.program.placeholders().next().is_some(),
            _ => false,
        };
        self.steps.iter().filter(|s| templated(&s.action)).map(|s| &s.id).collect()
    }

    /// Connections whose URL's shape a placeholder decides, its scheme or a query key (only a
    /// stored run of an earlier release can have one: `url = "{{needs.pitr.url}}"`): the
    /// targets or an output would choose the database a step writes to.
    pub fn templated_urls(&self) -> Vec<&ConnectionName> {
        self.connections
            .iter()
            .filter(|c| c.url.templated_shape().is_some())
            .map(|c| &c.name)
            .collect()
    }

    /// The step with this id.
    pub fn step(&self, id: &StepId) -> Option<&Step> {
        self.steps.iter().find(|s| &s.id == id)
    }

    /// Index of the step with this id.
    pub fn step_index(&self, id: &StepId) -> Option<usize> {
        self.steps.iter().position(|s| &s.id == id)
    }

    /// `text` (a workflow file) with the capacities of some `[resources]` pools replaced, for
    /// what-if planning. The result is re-serialized TOML (comments are not kept). Every pool
    /// named must exist.
    pub fn with_capacities(text: &str, capacities: &[(PoolName, u32)]) -> Result<String, String> {
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let Some(toml::Value::Table(pools)) = doc.get_mut("resources") else {
            return Err("the workflow declares no [resources]".to_owned());
        };
        for (name, cap) in capacities {
            if *cap == 0 {
                return Err(format!("capacity of `{name}` must be at least 1"));
            }
            if !pools.contains_key(name.as_str()) {
                let known: Vec<&str> = pools.keys().map(String::as_str).collect();
                return Err(format!(
                    "the workflow has no resource `{name}` (it has: {})",
                    known.join(", ")
                ));
            }
            pools.insert(name.to_string(), toml::Value::Integer(i64::from(*cap)));
        }
        toml::to_string(&doc).map_err(|e| e.to_string())
    }

    /// Step indices with every step after all the steps it needs.
    pub fn topological_order(&self) -> &[usize] {
        &self.topo
    }

    /// Indices of the steps that the step at index `step` needs.
    pub fn need_indices(&self, step: usize) -> &[usize] {
        &self.need_idx[step]
    }

    /// The connection with this name.
    pub fn connection(&self, name: &ConnectionName) -> Option<&Connection> {
        self.connections.iter().find(|c| &c.name == name)
    }

    /// Every template a step renders: its action's and those of the connections it uses.
    pub fn step_templates<'a>(&'a self, step: &'a Step) -> Vec<&'a Template> {
        let mut out = step.action.templates();
        out.extend(step.queue.as_ref());
        out.extend(
            step.action
                .connections()
                .into_iter()
                .filter_map(|c| self.connection(c))
                .map(|c| c.url.template()),
        );
        out
    }

    /// Every environment variable the workflow reads (`${VAR}`), sorted.
    pub fn env_vars(&self) -> Vec<String> {
        let mut vars: Vec<String> = self
            .connections
            .iter()
            .map(|c| c.url.template())
            .chain(self.steps.iter().flat_map(|s| s.action.templates()))
            .chain(self.preflight.iter().flat_map(|p| p.action.templates()))
            .flat_map(|t| t.env_vars().map(str::to_owned))
            .collect();
        vars.sort();
        vars.dedup();
        vars
    }

    /// The pool with this name.
    pub fn pool(&self, name: &PoolName) -> Option<&Pool> {
        self.resources.iter().find(|p| &p.name == name)
    }

    /// Every attribute targets must carry, with the step and reason, in step order.
    pub fn attribute_uses(&self) -> Vec<AttributeUse> {
        let mut uses = Vec::new();
        for step in &self.steps {
            let mut add = |attr: &AttrName, how: String| {
                uses.push(AttributeUse { attr: attr.clone(), step: step.id.clone(), how });
            };
            if let Scope::Group(attr) = &step.scope {
                add(attr, format!("scope group:{attr}"));
            }
            for c in &step.when {
                add(&c.attr, format!("when {} = {:?}", c.attr, c.value));
            }
            for t in self.step_templates(step) {
                for p in t.placeholders() {
                    if let Placeholder::TargetAttr(attr) = p {
                        add(attr, format!("template {{{{{p}}}}}"));
                    }
                }
            }
        }
        uses
    }

    /// The longest chain of steps by estimates, ignoring scopes and `when` (the critical path of
    /// a single target that every step applies to), first to last.
    pub fn step_critical_path(&self) -> (Duration, Vec<&StepId>) {
        let n = self.steps.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, needs) in self.need_idx.iter().enumerate() {
            for &j in needs {
                dependents[j].push(i);
            }
        }
        let mut rank = vec![Duration::ZERO; n];
        let mut next: Vec<Option<usize>> = vec![None; n];
        for &i in self.topo.iter().rev() {
            let best = dependents[i].iter().copied().max_by_key(|&d| (rank[d], Reverse(d)));
            rank[i] = self.steps[i].estimate + best.map_or(Duration::ZERO, |d| rank[d]);
            next[i] = best;
        }
        let Some(mut cur) = (0..n).max_by_key(|&i| (rank[i], Reverse(i))) else {
            return (Duration::ZERO, Vec::new());
        };
        let total = rank[cur];
        let mut path = vec![&self.steps[cur].id];
        while let Some(d) = next[cur] {
            path.push(&self.steps[d].id);
            cur = d;
        }
        (total, path)
    }

    /// Group attributes that must hold one value per target, because a target-scope step reads
    /// `{{needs.X.KEY}}` from the group instance of its target.
    pub fn scalar_group_attributes(&self) -> Vec<(AttrName, StepId)> {
        let mut out = Vec::new();
        for step in self.steps.iter().filter(|s| s.scope == Scope::Target) {
            for t in self.step_templates(step) {
                for p in t.placeholders() {
                    if let Placeholder::Needs { step: dep, .. } = p
                        && let Some(Scope::Group(attr)) = self.step(dep).map(|d| &d.scope)
                    {
                        out.push((attr.clone(), step.id.clone()));
                    }
                }
            }
        }
        out
    }
}
