//! Restore as a new tenant (`as`): which columns of a slice change, and where each one's new
//! value comes from. Pure: no I/O; each engine stages and rewrites the rows ([`crate::pg`]).
//!
//! - The tenant's own columns become the new tenant id, where they hold the old one: the
//!   root's key, and `tenant_column` in every planned table that has it, however its rows are
//!   found (a `sites` root whose `id` and `site_id` both hold the tenant: both become the new
//!   id; an `issues` table reached through `project_id` still says whose it is in `site_id`).
//! - Every other table's primary key gets new values, unless a column of it already changes
//!   (it follows a parent or holds the tenant): `(comment_id, seq)` stays unique with the
//!   comment's new id and the old `seq`. A key of its own is one column: a uuid key's new value
//!   is derived ([`new_uuid`]: the same new tenant, table and old key always give the same
//!   value, so a retry writes the same rows; a text key is a uuid key when every value of it
//!   in the slice parses as a uuid, checked by each copy before anything is written, and gets
//!   [`new_uuid_of`]'s value as lowercase hyphenated text); an integer key's is drawn from the table's
//!   sequence on the destination, the old→new map kept there in [`KEY_MAP`] (written in the
//!   copy's own transaction), so a retry or a resume reuses it. Any other key type (a float,
//!   a date), or a composite key none of whose columns changes,
//!   is refused, naming table and column.
//! - Every foreign key between tables of the slice follows its parent's new value, column by
//!   column (composite and self-references included). A value the map does not have (a
//!   nullable reference to a row of another tenant) is kept: it still points where it did.
//!   The foreign keys are those of the schema given to [`plan`]: a reference the workflow
//!   declares ([`crate::plan::declare`]) follows its parent like a catalog key; a reference
//!   neither the catalog nor the workflow knows keeps the old value (it then points at the old
//!   tenant's row).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::SliceError;
use crate::plan::{SlicePlan, Via};
use crate::schema::{Engine, Schema};

/// The destination table that keeps the integer keys' old→new map, created if missing:
/// `(new_tenant, tbl, old_key, new_key)`, keys as text, primary key `(new_tenant, tbl,
/// old_key)`.
pub const KEY_MAP: &str = "rewind_key_map";

/// The `tbl` of the [`KEY_MAP`] row that records a restore as a new tenant: `(new_tenant, '',
/// '', '')`, written by every copy as a new tenant in its own transaction. No table is named
/// `''`, so no integer key's map holds it.
pub const CLAIM_TABLE: &str = "";

/// The refusal of a copy as `new_tenant` whose id already has `rows` rows on the destination
/// that no copy as it wrote ([`CLAIM_TABLE`]): they are another tenant's, which the copy would
/// replace.
pub fn refuse_existing(new_tenant: &str, rows: u64) -> SliceError {
    SliceError::Refused(format!(
        "restore as a new tenant: `as` {new_tenant:?} already has {rows} row(s) in the \
         destination's slice that no restore as it wrote: it is another tenant, whose rows the \
         copy would replace; choose an id no tenant has; nothing was written"
    ))
}

/// The namespace of [`new_uuid`] (a fixed, random uuid: rewind's).
pub const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6d1c_52a4_3b8e_4f0a_9e27_c4a1_d0b5_7e39);

/// The new value of the uuid key `old` (its canonical text) of `table` in the slice restored
/// as `new_tenant`: uuid v5 of [`NAMESPACE`] and `new_tenant`, `table`, `old` joined by NUL.
pub fn new_uuid(new_tenant: &str, table: &str, old: &str) -> String {
    let name = format!("{new_tenant}\0{table}\0{}", old.to_ascii_lowercase());
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).hyphenated().to_string()
}

/// The new value of a uuid key stored as text, from its parsed old value: [`new_uuid`] of the
/// old value's canonical (lowercase, hyphenated) form, so `{…}`, simple and upper-case
/// spellings of one uuid get the same new value.
pub fn new_uuid_of(new_tenant: &str, table: &str, old: uuid::Uuid) -> uuid::Uuid {
    let name = format!("{new_tenant}\0{table}\0{}", old.hyphenated());
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// Whether a key column of `engine` typed `data_type` is text: remapped as a uuid only when
/// every value of it in the slice parses as one ([`text_uuid`], checked by each copy before
/// anything is written).
pub fn is_text(engine: Engine, data_type: &str) -> bool {
    let t = data_type.trim().to_ascii_lowercase();
    let base = t.split(['(', ' ']).next().unwrap_or_default();
    match engine {
        Engine::Postgres => {
            matches!(base, "text" | "character" | "char" | "varchar" | "bpchar")
                || t.starts_with("character varying")
        }
        Engine::Mysql => {
            matches!(base, "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext")
        }
        Engine::Sqlite => {
            !t.contains("uuid")
                && !t.contains("int")
                && (t.contains("char") || t.contains("clob") || t.contains("text"))
        }
    }
}

/// A value of the text key `table`.`column` as a uuid, or the refusal naming table, column
/// and the value.
///
/// # Errors
/// [`SliceError::Refused`] when `value` does not parse as a uuid.
pub fn text_uuid(table: &str, column: &str, value: &str) -> Result<uuid::Uuid, SliceError> {
    uuid::Uuid::parse_str(value.trim()).map_err(|_| {
        SliceError::Refused(format!(
            "restore as a new tenant: the text key `{table}`.`{column}` holds {value:?}, which is \
             not a uuid: a text key is remapped only when every value of it in the slice is a \
             uuid; nothing was written"
        ))
    })
}

/// The new value (lowercase, hyphenated) of the uuid key `owner`'s old value `old` (its
/// text): for a text key ([`is_text`]) `old` must parse as a uuid and the value derives from
/// its canonical form ([`new_uuid_of`]); for a uuid-typed key, [`new_uuid`] of `old`.
///
/// # Errors
/// [`SliceError::Refused`] naming table, column and value when a text key's value is not a
/// uuid.
pub fn new_key_uuid(
    engine: Engine,
    new_tenant: &str,
    owner: &Owner,
    old: &str,
) -> Result<String, SliceError> {
    if is_text(engine, &owner.data_type) {
        let u = text_uuid(&owner.table, &owner.column, old)?;
        Ok(new_uuid_of(new_tenant, &owner.table, u).hyphenated().to_string())
    } else {
        Ok(new_uuid(new_tenant, &owner.table, old))
    }
}

/// How a table's own key gets new values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Derived ([`new_uuid`]).
    Uuid,
    /// Drawn from the table's sequence (auto-increment), mapped in [`KEY_MAP`].
    Integer,
}

/// A table's own key: one column whose new values are made for the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub table: String,
    pub column: String,
    pub data_type: String,
    pub kind: KeyKind,
}

/// Where a changed column's new value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The new tenant id (where the column holds the old one).
    Tenant,
    /// The new value of [`RemapPlan::owners`]`[i]`'s key (where the map has the old value).
    Key(usize),
}

/// What a restore as a new tenant changes in a slice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemapPlan {
    /// The keys that get new values, in plan order.
    pub owners: Vec<Owner>,
    /// Per planned table (in plan order), the columns that change.
    pub columns: Vec<BTreeMap<String, Source>>,
}

impl RemapPlan {
    /// The change of `column` in the plan's table number `table`, if it changes.
    pub fn source(&self, table: usize, column: &str) -> Option<Source> {
        self.columns.get(table).and_then(|c| c.get(column)).copied()
    }

    /// What a restore as a new tenant changes, as `rewind plan` and `--dry-run` print it
    /// under the slice of `plan` (made from `schema`): the columns that become the new
    /// tenant id, the keys that get new values and how, and the references that follow their
    /// parent's new value (a declared one marked `(declared)`), each in plan order.
    pub fn describe(&self, schema: &Schema, plan: &SlicePlan) -> Vec<String> {
        let list = |items: Vec<String>| {
            if items.is_empty() { "none".to_owned() } else { items.join(", ") }
        };
        let mut tenant = Vec::new();
        for (t, columns) in plan.tables.iter().zip(&self.columns) {
            for c in &t.columns {
                if columns.get(&c.name) == Some(&Source::Tenant) {
                    tenant.push(format!("{}.{}", t.name, c.name));
                }
            }
        }
        let keys: Vec<String> = self
            .owners
            .iter()
            .map(|o| {
                let how = match o.kind {
                    KeyKind::Integer => format!("integer, mapped in {KEY_MAP}"),
                    KeyKind::Uuid if is_text(plan.engine, &o.data_type) => {
                        "text holding uuids, derived".to_owned()
                    }
                    KeyKind::Uuid => "uuid, derived".to_owned(),
                };
                format!("{}.{} ({how})", o.table, o.column)
            })
            .collect();
        let schema =
            crate::plan::declare(schema, &plan.references).unwrap_or(Cow::Borrowed(schema));
        let mut following = Vec::new();
        for (t, columns) in plan.tables.iter().zip(&self.columns) {
            let Some(table) = schema.tables.get(&t.name) else { continue };
            for fk in &table.foreign_keys {
                let follows = plan.table(&fk.parent).is_some()
                    && fk.columns.iter().any(|c| columns.contains_key(c));
                if follows {
                    following.push(format!(
                        "{} -> {}{}",
                        crate::plan::key_ref(&t.name, &fk.columns),
                        crate::plan::key_ref(&fk.parent, &fk.parent_columns),
                        if fk.declared { " (declared)" } else { "" }
                    ));
                }
            }
        }
        vec![
            format!("the new tenant id: {}", list(tenant)),
            format!("keys remapped: {}", list(keys)),
            format!("following their parent: {}", list(following)),
        ]
    }
}

/// The key kind a column type of `engine` can be remapped as, if any.
pub fn key_kind(engine: Engine, data_type: &str) -> Option<KeyKind> {
    let t = data_type.trim().to_ascii_lowercase();
    let base = t.split(['(', ' ']).next().unwrap_or_default();
    match engine {
        Engine::Postgres => match base {
            "uuid" => Some(KeyKind::Uuid),
            "smallint" | "integer" | "bigint" => Some(KeyKind::Integer),
            _ if is_text(engine, &t) => Some(KeyKind::Uuid),
            _ => None,
        },
        Engine::Mysql => match base {
            "uuid" => Some(KeyKind::Uuid),
            "binary" if t.starts_with("binary(16)") => Some(KeyKind::Uuid),
            _ if is_text(engine, &t) => Some(KeyKind::Uuid),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => Some(KeyKind::Integer),
            _ => None,
        },
        Engine::Sqlite => {
            if t.contains("uuid") {
                Some(KeyKind::Uuid)
            } else if t.contains("int") {
                Some(KeyKind::Integer)
            } else if is_text(engine, &t) {
                Some(KeyKind::Uuid)
            } else {
                None
            }
        }
    }
}

/// Plans what a restore as a new tenant changes in `plan` (made from `schema`, whose foreign
/// keys it follows, the plan's declared references included: [`crate::plan::declare`]), or
/// refuses a key that cannot be remapped, naming its table and column. An integer key must be
/// fed by a sequence the catalog names on PostgreSQL; on other engines the copy checks its own
/// way of drawing values.
///
/// # Errors
/// [`SliceError::Refused`] naming the table and column of a key that cannot be remapped.
pub fn plan(schema: &Schema, plan: &SlicePlan) -> Result<RemapPlan, SliceError> {
    let schema = &*crate::plan::declare(schema, &plan.references)?;
    // A declared reference out of the slice to a table outside it would keep the old tenant's
    // parent ids in the new tenant's rows: the workflow said they are references, so they must
    // follow, and they cannot.
    for t in &plan.tables {
        let Some(table) = schema.tables.get(&t.name) else { continue };
        if let Some(fk) =
            table.foreign_keys.iter().find(|fk| fk.declared && plan.table(&fk.parent).is_none())
        {
            return Err(SliceError::Refused(format!(
                "restore as a new tenant: the declared reference `{}` points at `{}`, which is \
                 not in the slice: its values would keep the old tenant's ids; add `{}` to \
                 the slice or leave the reference out; nothing was written",
                fk.name.trim_start_matches("declared:"),
                fk.parent,
                fk.parent
            )));
        }
    }
    let mut r = Resolver { schema, plan, own: BTreeMap::new(), owners: Vec::new() };
    for t in &plan.tables {
        r.own_key(&t.name, &mut BTreeSet::new())?;
    }
    let mut columns = Vec::new();
    for t in &plan.tables {
        let mut changed = BTreeMap::new();
        for c in &t.columns {
            if let Some(source) = r.resolve(&t.name, &c.name, &mut BTreeSet::new())? {
                changed.insert(c.name.clone(), source);
            }
        }
        columns.push(changed);
    }
    Ok(RemapPlan { owners: r.owners, columns })
}

struct Resolver<'a> {
    schema: &'a Schema,
    plan: &'a SlicePlan,
    /// Per table: its own key's index in `owners`, or none.
    own: BTreeMap<String, Option<usize>>,
    owners: Vec<Owner>,
}

impl Resolver<'_> {
    /// Whether `column` of `table` holds the tenant id: a via of the table says so, or it is
    /// the request's `tenant_column` (in any planned table that has it, however its rows are
    /// found: a table reached through a reference still says whose it is in that column).
    fn is_tenant(&self, table: &str, column: &str) -> bool {
        let Some(t) = self.plan.table(table) else { return false };
        let tenant_column = self.plan.tenant_column.as_deref() == Some(column)
            && t.columns.iter().any(|c| c.name == column);
        tenant_column
            || t.via.iter().any(|v| match v {
                Via::Root { column: c } | Via::TenantColumn { column: c } => c == column,
                Via::Parent { .. } => false,
            })
    }

    /// Where `column` of `table` gets its new value from, following foreign keys into the
    /// slice; `None`: kept.
    fn resolve(
        &mut self,
        table: &str,
        column: &str,
        visiting: &mut BTreeSet<(String, String)>,
    ) -> Result<Option<Source>, SliceError> {
        if let Some(s) = self.follow(table, column, visiting)? {
            return Ok(Some(s));
        }
        let own = self.own_key(table, &mut BTreeSet::new())?;
        Ok(own.filter(|&i| self.owners[i].column == column).map(Source::Key))
    }

    /// The tenant, or a parent's change for a column of a foreign key into the slice.
    fn follow(
        &mut self,
        table: &str,
        column: &str,
        visiting: &mut BTreeSet<(String, String)>,
    ) -> Result<Option<Source>, SliceError> {
        if self.is_tenant(table, column) {
            return Ok(Some(Source::Tenant));
        }
        if !visiting.insert((table.to_owned(), column.to_owned())) {
            return Ok(None);
        }
        let Some(t) = self.schema.tables.get(table) else { return Ok(None) };
        let parents: Vec<(String, String)> = t
            .foreign_keys
            .iter()
            .filter(|fk| self.plan.table(&fk.parent).is_some())
            .filter_map(|fk| {
                let i = fk.columns.iter().position(|c| c == column)?;
                let pc = fk.parent_columns.get(i)?;
                (!(fk.parent == table && pc == column)).then(|| (fk.parent.clone(), pc.clone()))
            })
            .collect();
        for (parent, pc) in parents {
            if let Some(s) = self.resolve(&parent, &pc, visiting)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The table's own key, if it has one (see the module), planned once.
    fn own_key(
        &mut self,
        table: &str,
        visiting: &mut BTreeSet<String>,
    ) -> Result<Option<usize>, SliceError> {
        if let Some(own) = self.own.get(table) {
            return Ok(*own);
        }
        if !visiting.insert(table.to_owned()) {
            return Ok(None);
        }
        let Some(t) = self.plan.table(table) else { return Ok(None) };
        let key = t.primary_key.clone();
        let mut follows = false;
        for c in &key {
            follows |= self.follow(table, c, &mut BTreeSet::new())?.is_some();
        }
        let own = if key.is_empty() || follows {
            None
        } else {
            let [column] = key.as_slice() else {
                return Err(SliceError::Refused(format!(
                    "restore as a new tenant: the primary key of `{table}` ({}) is composite and \
                     none of its columns is the tenant or a reference into the slice: it cannot \
                     be remapped",
                    key.join(", ")
                )));
            };
            let col = t.columns.iter().find(|c| &c.name == column);
            let data_type = col.map(|c| c.data_type.clone()).unwrap_or_default();
            let Some(kind) = key_kind(self.plan.engine, &data_type) else {
                return Err(SliceError::Refused(format!(
                    "restore as a new tenant: the key `{table}`.`{column}` is `{data_type}`, which \
                     cannot be remapped (other keys than the tenant's must be uuid, integer, or \
                     text holding uuids)"
                )));
            };
            if kind == KeyKind::Integer
                && self.plan.engine == Engine::Postgres
                && col.is_none_or(|c| c.sequence.is_none())
            {
                return Err(SliceError::Refused(format!(
                    "restore as a new tenant: the integer key `{table}`.`{column}` has no \
                     sequence (identity or serial) to draw new values from"
                )));
            }
            self.owners.push(Owner {
                table: table.to_owned(),
                column: column.clone(),
                data_type,
                kind,
            });
            Some(self.owners.len() - 1)
        };
        self.own.insert(table.to_owned(), own);
        Ok(own)
    }
}

/// Rewrites a source row's cells (their text) as the copy writes them: a digest of the source
/// slice through it equals the digest of the restored new tenant's slice.
#[derive(Clone, Debug)]
pub struct Rewrite<'a> {
    pub remap: &'a RemapPlan,
    /// The old and new tenant ids as the engine renders the key as text.
    pub old_tenant: String,
    pub new_tenant: String,
    /// Per owner, old → new for the keys of the slice (uuid: [`new_uuid`]; integer: as
    /// read from [`KEY_MAP`]).
    pub maps: HashMap<usize, HashMap<String, String>>,
}

impl Rewrite<'_> {
    /// The cell of `column` in the plan's table `table` as the restored row has it; `None`:
    /// unchanged.
    pub fn cell(&self, table: usize, column: &str, cell: &str) -> Option<String> {
        match self.remap.source(table, column)? {
            Source::Tenant => (cell == self.old_tenant).then(|| self.new_tenant.clone()),
            Source::Key(i) => self.maps.get(&i)?.get(cell).cloned(),
        }
    }
}

/// A restore as a new tenant: the new id (as the workflow gave it) and what changes.
#[derive(Clone, Copy, Debug)]
pub struct NewTenant<'a> {
    pub id: &'a str,
    pub remap: &'a RemapPlan,
}
