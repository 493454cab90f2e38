//! SQLite: the catalog ([`schema`]), a tenant's copy from a backup file ([`copy`]) and its
//! digest ([`digest`]).
//!
//! **Catalog.** Tables from `sqlite_schema` (`type = 'table'`, not `sqlite_%`), columns from
//! `pragma_table_xinfo` (hidden 2 and 3 are generated columns; hidden 1, a virtual table's
//! hidden column, is left out), foreign keys from `pragma_foreign_key_list` (a key written
//! without parent columns references the parent's primary key), triggers from `sqlite_schema`
//! (`type = 'trigger'`). Names are matched without regard to case, as SQLite does. A copy
//! checks no reference until its own check before the commit (enforcement is off), so
//! [`ForeignKey::deferrable`] is always `false` here: it does not decide anything. Rowids and
//! `AUTOINCREMENT` counters advance by themselves on explicit inserts: no
//! [`Column::sequence`].
//!
//! **Tenant id.** Bound as `?1`, typed by the root key column's declared type affinity
//! (INTEGER: a 64-bit integer, REAL: a finite float, otherwise text; a slice without a root
//! binds text, which SQLite converts for a column of numeric affinity). A key with no declared
//! type converts nothing: an id written as an integer (`42`, not `042` or `+42`) is bound as
//! one there, as an integer key stores it.
//!
//! **Copy.** The source file is attached read-only (`file:…?mode=ro`, verified afterwards),
//! checked against the destination (every planned table on both sides with the same copied
//! columns and declared types), then, with `PRAGMA foreign_keys` off (put back as it was
//! after the transaction, also after a failure; enforced, a delete would run `ON DELETE
//! CASCADE`/`SET NULL` into rows outside the slice), in one `BEGIN IMMEDIATE` transaction: a
//! source without the tenant's root row is refused (the copy would only delete), the planned
//! tables' user triggers are dropped (their SQL kept), the slice is deleted children first and inserted parents first by `INSERT … SELECT` from the
//! attached source (generated columns are recomputed, not copied), the triggers are created
//! again, and the references of the planned tables and of every table with a foreign key into
//! one of them are checked (`pragma_foreign_key_check`): a violation the copy introduced
//! (present after, absent before) refuses the copy, naming the table, the key and the count;
//! the planned tables are checked whole, so another tenant's row left pointing at a deleted
//! row refuses it too. This check reads those tables whole. Since the trigger DDL is part of
//! the transaction, a failed copy gives the triggers back with the rows. A plan's
//! [`crate::plan::SliceTable::set_after`] columns are inserted directly: with no reference
//! checked before the end, no cycle needs breaking.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use futures::TryStreamExt;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite, SqliteConnection};

use crate::error::{SliceError, db};
use crate::plan::{SlicePlan, SliceTable};
use crate::remap::{self, KeyKind, NewTenant, Rewrite, Source};
use crate::schema::{Column, Engine, ForeignKey, Schema, Table};
use crate::sql::{Dialect, Scope, selector};
use crate::{CopyReport, RowHasher, SliceDigest, TableCopy};

/// The name the source file is attached under during a copy.
const SOURCE: &str = "rw_source";

/// The catalog of `schema_name` ("main", or an attached database's name).
pub async fn schema(conn: &mut SqliteConnection, schema_name: &str) -> Result<Schema, SliceError> {
    let master = format!("{}.sqlite_schema", Dialect::Ansi.quote(schema_name));
    let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT name FROM {master} WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY name"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format_args!("read the tables of SQLite schema `{schema_name}`")))?;
    let mut tables = BTreeMap::new();
    let mut raw_keys = Vec::new();
    for name in names {
        let (columns, primary_key) = columns(conn, schema_name, &name).await?;
        raw_keys.push((name.clone(), foreign_keys(conn, schema_name, &name).await?));
        let table = Table {
            name: name.clone(),
            columns,
            primary_key,
            foreign_keys: Vec::new(),
            triggers: Vec::new(),
        };
        tables.insert(name, table);
    }
    for (child, keys) in raw_keys {
        let resolved: Vec<ForeignKey> =
            keys.into_iter().map(|k| resolve_key(&tables, &child, k)).collect();
        if let Some(t) = tables.get_mut(&child) {
            t.foreign_keys = resolved;
        }
    }
    let triggers: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT name, tbl_name FROM {master} WHERE type = 'trigger' ORDER BY name"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format_args!("read the triggers of SQLite schema `{schema_name}`")))?;
    for (trigger, on) in triggers {
        if let Some(name) = find_nocase(tables.keys(), &on)
            && let Some(t) = tables.get_mut(&name)
        {
            t.triggers.push(trigger);
        }
    }
    Ok(Schema { engine: Engine::Sqlite, tables })
}

/// A table's columns (hidden columns of virtual tables left out) and primary key, in key order.
async fn columns(
    conn: &mut SqliteConnection,
    schema_name: &str,
    table: &str,
) -> Result<(Vec<Column>, Vec<String>), SliceError> {
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1, ?2) ORDER BY cid",
    )
    .bind(table)
    .bind(schema_name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format_args!("read the columns of `{table}`")))?;
    let mut key: Vec<(i64, String)> = Vec::new();
    let mut columns = Vec::new();
    for (name, data_type, notnull, pk, hidden) in rows {
        if hidden == 1 {
            continue;
        }
        if pk > 0 {
            key.push((pk, name.clone()));
        }
        columns.push(Column {
            name,
            data_type,
            nullable: notnull == 0,
            generated: matches!(hidden, 2 | 3),
            sequence: None,
        });
    }
    key.sort();
    let primary_key: Vec<String> = key.into_iter().map(|(_, n)| n).collect();
    // A rowid alias (`INTEGER PRIMARY KEY`) is never NULL, whatever `notnull` says.
    if let [only] = primary_key.as_slice()
        && let Some(c) = columns.iter_mut().find(|c| &c.name == only)
        && c.data_type.eq_ignore_ascii_case("INTEGER")
    {
        c.nullable = false;
    }
    Ok((columns, primary_key))
}

/// A foreign key as `pragma_foreign_key_list` gives it, before names are resolved.
struct RawKey {
    id: i64,
    parent: String,
    columns: Vec<String>,
    /// `None` where the key names no parent column (the parent's primary key).
    parent_columns: Vec<Option<String>>,
}

/// A table's foreign keys, columns in key order.
async fn foreign_keys(
    conn: &mut SqliteConnection,
    schema_name: &str,
    table: &str,
) -> Result<Vec<RawKey>, SliceError> {
    let rows: Vec<(i64, i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1, ?2) \
         ORDER BY id, seq",
    )
    .bind(table)
    .bind(schema_name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format_args!("read the foreign keys of `{table}`")))?;
    let mut keys: Vec<RawKey> = Vec::new();
    for (id, _seq, parent, from, to) in rows {
        match keys.last_mut() {
            Some(k) if k.id == id => {
                k.columns.push(from);
                k.parent_columns.push(to);
            }
            _ => keys.push(RawKey { id, parent, columns: vec![from], parent_columns: vec![to] }),
        }
    }
    Ok(keys)
}

/// `key` with its table and column names spelled as the catalog spells them, and an omitted
/// parent column list replaced by the parent's primary key (left empty when the parent is
/// unknown or has none: SQLite refuses such a key when it is used).
fn resolve_key(tables: &BTreeMap<String, Table>, child: &str, key: RawKey) -> ForeignKey {
    let parent_name = find_nocase(tables.keys(), &key.parent).unwrap_or(key.parent);
    let parent = tables.get(&parent_name);
    let child_table = tables.get(child);
    let spell = |table: Option<&Table>, name: String| {
        table.and_then(|t| find_nocase(t.columns.iter().map(|c| &c.name), &name)).unwrap_or(name)
    };
    let parent_columns = if key.parent_columns.iter().all(Option::is_none) {
        parent.map(|p| p.primary_key.clone()).unwrap_or_default()
    } else {
        key.parent_columns.into_iter().map(|c| spell(parent, c.unwrap_or_default())).collect()
    };
    ForeignKey {
        name: format!("fk{}", key.id),
        columns: key.columns.into_iter().map(|c| spell(child_table, c)).collect(),
        parent: parent_name,
        parent_columns,
        deferrable: false,
        declared: false,
    }
}

/// The name among `names` equal to `name` without regard to ASCII case, the exact one first.
fn find_nocase<'a>(names: impl IntoIterator<Item = &'a String>, name: &str) -> Option<String> {
    let names: Vec<&String> = names.into_iter().collect();
    names
        .iter()
        .find(|n| n.as_str() == name)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(name)))
        .map(|n| (*n).clone())
}

/// A column's type affinity, by SQLite's rules (section 3.1 of "Datatypes In SQLite").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

fn affinity(declared: &str) -> Affinity {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Integer
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|s| t.contains(s)) {
        Affinity::Text
    } else if t.contains("BLOB") || t.trim().is_empty() {
        Affinity::Blob
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|s| t.contains(s)) {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// The tenant id as it is bound.
#[derive(Clone, Debug)]
enum Tenant {
    Integer(i64),
    Real(f64),
    Text(String),
}

impl Tenant {
    /// `tenant` typed by the root key's affinity.
    fn parse(plan: &SlicePlan, tenant: &str) -> Result<Self, SliceError> {
        let Some(root) = &plan.root else { return Ok(Self::Text(tenant.to_owned())) };
        let bad = || SliceError::BadTenant {
            tenant: tenant.to_owned(),
            table: root.table.clone(),
            column: root.column.clone(),
            data_type: root.data_type.clone(),
        };
        match affinity(&root.data_type) {
            Affinity::Integer => tenant.parse().map(Self::Integer).map_err(|_| bad()),
            Affinity::Real => match tenant.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Self::Real(v)),
                _ => Err(bad()),
            },
            // A key without a declared type compares without conversion: an integer key
            // never equals a text tenant. An id written as an integer (as SQLite writes
            // one: no sign, no leading zero) is bound as one.
            Affinity::Blob if root.data_type.trim().is_empty() => match tenant.parse::<i64>() {
                Ok(v) if v.to_string() == tenant => Ok(Self::Integer(v)),
                _ => Ok(Self::Text(tenant.to_owned())),
            },
            Affinity::Text | Affinity::Blob | Affinity::Numeric => {
                Ok(Self::Text(tenant.to_owned()))
            }
        }
    }

    /// `query` with the tenant bound as its next parameter (`?1` when it is the first).
    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    ) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
        match self {
            Self::Integer(v) => query.bind(*v),
            Self::Real(v) => query.bind(*v),
            Self::Text(v) => query.bind(v.clone()),
        }
    }
}

/// The scope of a selector over the tables of schema `qualifier` (`main.`, `rw_source.`).
fn scope(qualifier: &str) -> Scope<'_> {
    Scope { dialect: Dialect::Ansi, qualifier, tenant: "?1" }
}

fn check_engine(plan: &SlicePlan) -> Result<(), SliceError> {
    if plan.engine == Engine::Sqlite {
        Ok(())
    } else {
        Err(SliceError::Refused(format!(
            "the slice was planned for {}, not SQLite",
            plan.engine.name()
        )))
    }
}

/// Copies the tenant's slice from the SQLite file `source` into the database `dst` is open on.
///
/// Nothing writes `source`: it is attached with `mode=ro`. On any error the destination
/// transaction is rolled back (rows and triggers as they were); either way the source is
/// detached (best effort). Refused before anything is written: a tenant id that is not of the
/// root key's type, a plan for another engine, a source that is missing or is the destination,
/// a planned table or copied column missing or different on one side, a source without the
/// tenant's root row. The connection's `PRAGMA foreign_keys` is off during the copy and as it
/// was afterwards.
pub async fn copy(
    dst: &mut SqliteConnection,
    source: &Path,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(dst, source, plan, tenant, None).await
}

/// Copies the tenant's slice from `source` into `dst` as the new tenant `new`
/// ([`crate::remap`]): as [`copy`], but the new tenant's rows are deleted and the source's
/// inserted with their keys remapped through temporary map tables (uuid keys derived, integer
/// keys numbered after the largest of the table's values, the map's and `sqlite_sequence`'s,
/// kept in `main.rewind_key_map`, written in the copy's transaction). The old tenant's rows
/// are only read. uuid keys are those declared with a type containing `UUID`, stored as text.
pub async fn copy_as(
    dst: &mut SqliteConnection,
    source: &Path,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(dst, source, plan, tenant, Some(new)).await
}

async fn copy_maybe_as(
    dst: &mut SqliteConnection,
    source: &Path,
    plan: &SlicePlan,
    tenant: &str,
    new: Option<NewTenant<'_>>,
) -> Result<CopyReport, SliceError> {
    check_engine(plan)?;
    let tenant_value = Tenant::parse(plan, tenant)?;
    let new = match new {
        Some(n) => Some((n, new_tenant(plan, tenant, &tenant_value, n.id)?)),
        None => None,
    };
    attach(dst, source).await?;
    let result = copy_unenforced(dst, plan, tenant, &tenant_value, new.as_ref()).await;
    // Best effort: the copy's outcome stands either way, and a source left attached is
    // detached by the next copy on this connection.
    let _ = detach(dst).await;
    result
}

/// `source`, as a `file:` URI that opens it read-only.
fn read_only_uri(source: &Path) -> String {
    let mut uri = String::from("file:");
    for &b in source.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// The file behind schema `name` of the connection, if it is attached.
async fn attached_file(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<String>, SliceError> {
    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = ?1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("list the attached databases"))
}

/// Attaches `source` read-only as `rw_source` (detaching a stale one a cancelled copy left),
/// and makes sure SQLite opened that very file and not a literal `file:` name.
async fn attach(dst: &mut SqliteConnection, source: &Path) -> Result<(), SliceError> {
    let shown = source.display();
    if attached_file(dst, SOURCE).await?.is_some() {
        detach(dst).await?;
    }
    let wanted = std::fs::canonicalize(source).map_err(|e| {
        SliceError::Refused(format!("the source database `{shown}` cannot be read: {e}"))
    })?;
    if let Some(main) = attached_file(dst, "main").await?
        && !main.is_empty()
        && std::fs::canonicalize(&main).is_ok_and(|m| m == wanted)
    {
        return Err(SliceError::Refused(format!(
            "the source `{shown}` is the destination database itself"
        )));
    }
    sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ?1 AS {SOURCE}")))
        .bind(read_only_uri(&wanted))
        .persistent(false)
        .execute(&mut *dst)
        .await
        .map_err(db(format_args!("attach the source `{shown}` read-only")))?;
    let file = attached_file(dst, SOURCE).await?.unwrap_or_default();
    if std::fs::canonicalize(&file).ok().as_deref() != Some(wanted.as_path()) {
        let _ = detach(dst).await;
        return Err(SliceError::Refused(format!(
            "the source `{shown}` could not be attached read-only (SQLite opened `{file}`)"
        )));
    }
    Ok(())
}

async fn detach(dst: &mut SqliteConnection) -> Result<(), SliceError> {
    sqlx::query(AssertSqlSafe(format!("DETACH DATABASE {SOURCE}")))
        .persistent(false)
        .execute(&mut *dst)
        .await
        .map_err(db("detach the source"))?;
    Ok(())
}

/// One column as a side of the copy declares it.
struct SideColumn {
    data_type: String,
    generated: bool,
}

/// The columns of `schema_name`.`table`, by lower-case name; empty if the table is not there.
async fn side_columns(
    conn: &mut SqliteConnection,
    schema_name: &str,
    table: &str,
) -> Result<HashMap<String, SideColumn>, SliceError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, type, hidden FROM pragma_table_xinfo(?1, ?2)")
            .bind(table)
            .bind(schema_name)
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format_args!("read the columns of `{table}` in `{schema_name}`")))?;
    Ok(rows
        .into_iter()
        .map(|(name, data_type, hidden)| {
            (
                name.to_ascii_lowercase(),
                SideColumn { data_type, generated: matches!(hidden, 2 | 3) },
            )
        })
        .collect())
}

/// Refuses a copy between a source and a destination that differ in a planned table or one of
/// its copied columns (missing, generated on one side, or of another declared type).
async fn check_columns(dst: &mut SqliteConnection, plan: &SlicePlan) -> Result<(), SliceError> {
    for table in &plan.tables {
        let t = &table.name;
        let source = side_columns(dst, SOURCE, t).await?;
        let dest = side_columns(dst, "main", t).await?;
        for (side, cols) in [("source", &source), ("destination", &dest)] {
            if cols.is_empty() {
                return Err(SliceError::Refused(format!("table `{t}` is missing in the {side}")));
            }
        }
        for col in table.copied() {
            let c = &col.name;
            let key = c.to_ascii_lowercase();
            let mut types = Vec::new();
            for (side, cols) in [("source", &source), ("destination", &dest)] {
                let Some(found) = cols.get(&key) else {
                    return Err(SliceError::Refused(format!(
                        "column `{t}`.`{c}` is missing in the {side}"
                    )));
                };
                if found.generated {
                    return Err(SliceError::Refused(format!(
                        "column `{t}`.`{c}` is generated in the {side} but planned as a stored column"
                    )));
                }
                types.push(found.data_type.trim().to_ascii_uppercase());
            }
            if types[0] != types[1] {
                return Err(SliceError::Refused(format!(
                    "column `{t}`.`{c}` is `{}` in the source and `{}` in the destination",
                    types[0], types[1]
                )));
            }
        }
    }
    Ok(())
}

/// Runs the copy with the connection's foreign key enforcement off (sqlx turns it on by
/// default): enforced, deleting the tenant's parent rows would run their `ON DELETE CASCADE`
/// and `SET NULL` actions into rows outside the slice, deleting or changing them where the
/// check before the commit cannot see it. `PRAGMA foreign_keys` cannot change inside a
/// transaction: it is set before `BEGIN IMMEDIATE` and put back after the transaction ends,
/// committed or rolled back.
async fn copy_unenforced(
    dst: &mut SqliteConnection,
    plan: &SlicePlan,
    tenant: &str,
    value: &Tenant,
    new: Option<&(NewTenant<'_>, Tenant)>,
) -> Result<CopyReport, SliceError> {
    let enforced: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *dst)
        .await
        .map_err(db("read PRAGMA foreign_keys"))?;
    if enforced != 0 {
        set_foreign_keys(dst, false).await?;
    }
    let result = match check_columns(dst, plan).await {
        Ok(()) => copy_attached(dst, plan, tenant, value, new).await,
        Err(e) => Err(e),
    };
    if enforced != 0 {
        let restored = set_foreign_keys(dst, true).await;
        // After a failure, that failure is the one to report.
        if result.is_ok() {
            restored?;
        }
    }
    result
}

async fn set_foreign_keys(dst: &mut SqliteConnection, on: bool) -> Result<(), SliceError> {
    let sql = if on { "PRAGMA foreign_keys = ON" } else { "PRAGMA foreign_keys = OFF" };
    sqlx::query(sql).execute(&mut *dst).await.map_err(db(format_args!("`{sql}`")))?;
    let now: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *dst)
        .await
        .map_err(db("read PRAGMA foreign_keys"))?;
    if (now != 0) == on {
        Ok(())
    } else {
        Err(SliceError::Database {
            message: format!("`{sql}` did not take effect (is a transaction open?)"),
            transient: false,
        })
    }
}

/// Refuses a copy whose source has no root row for the tenant: the copy would delete the
/// destination's slice and insert nothing.
async fn check_source_root(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    tenant: &str,
    value: &Tenant,
) -> Result<(), SliceError> {
    let Some(root) = &plan.root else { return Ok(()) };
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {} = ?1",
        scope("rw_source.").table(&root.table),
        Dialect::Ansi.quote(&root.column)
    );
    let found: i64 = match value {
        Tenant::Integer(v) => sqlx::query_scalar(AssertSqlSafe(sql)).bind(*v),
        Tenant::Real(v) => sqlx::query_scalar(AssertSqlSafe(sql)).bind(*v),
        Tenant::Text(v) => sqlx::query_scalar(AssertSqlSafe(sql)).bind(v.clone()),
    }
    .persistent(false)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(format_args!("count the tenant's `{}` rows in the source", root.table)))?;
    if found > 0 {
        return Ok(());
    }
    Err(SliceError::Refused(format!(
        "the source has no `{}` row with `{}` = {tenant}: nothing to restore; nothing was deleted",
        root.table, root.column
    )))
}

/// A trigger kept while its table is restored.
struct SavedTrigger {
    name: String,
    sql: String,
}

/// The copy proper, the source attached: one destination transaction.
async fn copy_attached(
    dst: &mut SqliteConnection,
    plan: &SlicePlan,
    tenant: &str,
    value: &Tenant,
    new: Option<&(NewTenant<'_>, Tenant)>,
) -> Result<CopyReport, SliceError> {
    let mut tx =
        dst.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin the copy (BEGIN IMMEDIATE)"))?;
    // On error `tx` is dropped, which rolls back: the rows and the dropped triggers come back.
    check_source_root(&mut tx, plan, tenant, value).await?;
    let tables: Vec<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    let checked = checked_tables(&mut tx, &tables).await?;
    let before = violations(&mut tx, &checked).await?;
    let triggers = drop_triggers(&mut tx, &tables).await?;
    let mut report = CopyReport {
        tables: plan
            .tables
            .iter()
            .map(|t| TableCopy { table: t.name.clone(), deleted: 0, inserted: 0 })
            .collect(),
    };
    // The destination's slice is the new tenant's when restoring as one.
    let dst_value = new.map_or(value, |(_, v)| v);
    if let Some((n, _)) = new {
        check_text_keys(&mut tx, plan, *n, value).await?;
    }
    for (i, table) in plan.tables.iter().enumerate().rev() {
        report.tables[i].deleted = delete(&mut tx, plan, table, dst_value).await?;
    }
    match new {
        None => {
            for (i, table) in plan.tables.iter().enumerate() {
                report.tables[i].inserted = insert(&mut tx, plan, table, value).await?;
            }
        }
        Some((n, new_value)) => {
            let deleted = report.tables.iter().map(|t| t.deleted).sum();
            claim_new_tenant(&mut tx, n.id, deleted).await?;
            stage_maps(&mut tx, plan, *n, value, new_value).await?;
            for i in 0..plan.tables.len() {
                report.tables[i].inserted =
                    insert_remapped(&mut tx, plan, i, n.remap, value).await?;
            }
            drop_maps(&mut tx, n.remap).await?;
        }
    }
    for t in &triggers {
        sqlx::query(AssertSqlSafe(t.sql.clone()))
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(db(format_args!("create the trigger `{}` again", t.name)))?;
    }
    let after = violations(&mut tx, &checked).await?;
    let dangling = introduced(&before, &after);
    if !dangling.is_empty() {
        return Err(SliceError::Refused(describe_dangling(&mut tx, tenant, &dangling).await?));
    }
    tx.commit().await.map_err(|e| commit_error(tenant, &e))?;
    Ok(report)
}

/// The tables whose references a copy of `planned` can break: those, and every table with a
/// foreign key into one of them (a child the plan leaves out still points at deleted rows).
async fn checked_tables(
    tx: &mut SqliteConnection,
    planned: &[&str],
) -> Result<Vec<String>, SliceError> {
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, f.\"table\" FROM main.sqlite_schema AS m, \
         pragma_foreign_key_list(m.name, 'main') AS f WHERE m.type = 'table'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db("read the foreign keys into the planned tables"))?;
    let planned_has = |name: &str| planned.iter().any(|p| p.eq_ignore_ascii_case(name));
    let mut out: Vec<String> = planned.iter().map(|t| (*t).to_owned()).collect();
    for (child, parent) in edges {
        if planned_has(&parent) && !out.iter().any(|t| t.eq_ignore_ascii_case(&child)) {
            out.push(child);
        }
    }
    Ok(out)
}

/// A failed COMMIT: a deferred foreign key violated where the check before it could not see
/// (it covers the planned tables and their children) is a refusal, anything else a database
/// error.
fn commit_error(tenant: &str, e: &sqlx::Error) -> SliceError {
    let foreign_key = matches!(e, sqlx::Error::Database(d)
        if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation);
    if foreign_key {
        SliceError::Refused(format!(
            "restoring tenant {tenant:?} would leave rows of a table outside the slice referencing \
             rows the copy deleted ({}); nothing was written",
            crate::error::describe(e)
        ))
    } else {
        SliceError::database("commit the copy", e)
    }
}

/// Drops the user triggers of `tables`, returning their SQL in creation order.
async fn drop_triggers(
    tx: &mut SqliteConnection,
    tables: &[&str],
) -> Result<Vec<SavedTrigger>, SliceError> {
    let mut saved = Vec::new();
    for table in tables {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sql FROM main.sqlite_schema \
             WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE ORDER BY rowid",
        )
        .bind(*table)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(format_args!("read the triggers of `{table}`")))?;
        for (name, sql) in rows {
            sqlx::query(AssertSqlSafe(format!("DROP TRIGGER main.{}", Dialect::Ansi.quote(&name))))
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(db(format_args!("drop the trigger `{name}` of `{table}` for the copy")))?;
            saved.push(SavedTrigger { name, sql });
        }
    }
    Ok(saved)
}

/// Deletes the destination's slice rows of `table`.
async fn delete(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    table: &SliceTable,
    value: &Tenant,
) -> Result<u64, SliceError> {
    let main = scope("main.");
    let sql =
        format!("DELETE FROM {} WHERE {}", main.table(&table.name), selector(plan, table, main));
    let done = value
        .bind(sqlx::query(AssertSqlSafe(sql)).persistent(false))
        .execute(&mut *tx)
        .await
        .map_err(db(format_args!("delete the slice of `{}`", table.name)))?;
    Ok(done.rows_affected())
}

/// Inserts the source's slice rows of `table` (generated columns left out).
async fn insert(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    table: &SliceTable,
    value: &Tenant,
) -> Result<u64, SliceError> {
    let source = scope("rw_source.");
    let cols = Dialect::Ansi.list(table.copied().map(|c| c.name.as_str()));
    let sql = format!(
        "INSERT INTO {} ({cols}) SELECT {cols} FROM {} WHERE {}",
        scope("main.").table(&table.name),
        source.table(&table.name),
        selector(plan, table, source)
    );
    let done = value
        .bind(sqlx::query(AssertSqlSafe(sql)).persistent(false))
        .execute(&mut *tx)
        .await
        .map_err(db(format_args!("insert the slice of `{}`", table.name)))?;
    Ok(done.rows_affected())
}

/// One row of `pragma_foreign_key_check`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Violation {
    table: String,
    /// `None` in a `WITHOUT ROWID` table.
    rowid: Option<i64>,
    parent: String,
    fkid: i64,
}

/// The foreign-key violations of `tables` in `main`.
async fn violations(
    tx: &mut SqliteConnection,
    tables: &[String],
) -> Result<Vec<Violation>, SliceError> {
    let mut found = Vec::new();
    for table in tables {
        let rows: Vec<(String, Option<i64>, String, i64)> = sqlx::query_as(
            "SELECT \"table\", rowid, parent, fkid FROM pragma_foreign_key_check(?1, 'main')",
        )
        .bind(table.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db(format_args!("check the foreign keys of `{table}`")))?;
        found.extend(rows.into_iter().map(|(table, rowid, parent, fkid)| Violation {
            table,
            rowid,
            parent,
            fkid,
        }));
    }
    Ok(found)
}

/// The violations in `after` that `before` did not have, counted per (table, parent, key):
/// by row where rows have ids, by count in `WITHOUT ROWID` tables.
fn introduced(before: &[Violation], after: &[Violation]) -> BTreeMap<(String, String, i64), u64> {
    let known: HashSet<&Violation> = before.iter().filter(|v| v.rowid.is_some()).collect();
    let mut counts: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
    for v in after {
        if v.rowid.is_none() || !known.contains(v) {
            *counts.entry((v.table.clone(), v.parent.clone(), v.fkid)).or_default() += 1;
        }
    }
    for v in before.iter().filter(|v| v.rowid.is_none()) {
        *counts.entry((v.table.clone(), v.parent.clone(), v.fkid)).or_default() -= 1;
    }
    counts.into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| (k, n.unsigned_abs())).collect()
}

/// The refusal for references the copy would leave dangling, naming each key.
async fn describe_dangling(
    tx: &mut SqliteConnection,
    tenant: &str,
    dangling: &BTreeMap<(String, String, i64), u64>,
) -> Result<String, SliceError> {
    let mut parts = Vec::new();
    for ((table, parent, fkid), count) in dangling {
        let pairs: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT \"from\", \"to\" FROM pragma_foreign_key_list(?1, 'main') WHERE id = ?2 ORDER BY seq",
        )
        .bind(table)
        .bind(fkid)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(format_args!("read the foreign keys of `{table}`")))?;
        let from: Vec<&str> = pairs.iter().map(|(f, _)| f.as_str()).collect();
        let to: Vec<&str> = pairs.iter().filter_map(|(_, t)| t.as_deref()).collect();
        let target = if to.is_empty() { "primary key".to_owned() } else { to.join(", ") };
        parts.push(format!(
            "{count} row(s) of `{table}` reference rows of `{parent}` that are not there \
             (foreign key fk{fkid}: ({}) -> `{parent}` ({target}))",
            from.join(", ")
        ));
    }
    Ok(format!(
        "restoring tenant {tenant:?} would leave dangling references: {}; nothing was written",
        parts.join("; ")
    ))
}

/// The slice's digest, read in one transaction: per table, every column (generated ones
/// included) rendered by SQLite's `quote()`, which keeps a value's type (`1`, `1.0`, `'1'`,
/// `X'01'`) and a float's every bit.
pub async fn digest(
    conn: &mut SqliteConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<SliceDigest, SliceError> {
    check_engine(plan)?;
    let value = Tenant::parse(plan, tenant)?;
    let mut tx = conn.begin().await.map_err(db("begin the digest"))?;
    let mut out = SliceDigest::default();
    for (i, table) in plan.tables.iter().enumerate() {
        out.tables.push(digest_table(&mut tx, plan, i, table, &value, None).await?);
    }
    tx.commit().await.map_err(db("end the digest"))?;
    Ok(out)
}

async fn digest_table(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    index: usize,
    table: &SliceTable,
    value: &Tenant,
    rewrite: Option<&Rewrite<'_>>,
) -> Result<crate::TableDigest, SliceError> {
    let main = scope("main.");
    let cells = table
        .columns
        .iter()
        .map(|c| format!("quote({})", Dialect::Ansi.quote(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cells} FROM {} WHERE {}",
        main.table(&table.name),
        selector(plan, table, main)
    );
    let query = value.bind(sqlx::query(AssertSqlSafe(sql)).persistent(false));
    let mut rows = query.fetch(&mut *tx);
    let mut hasher = RowHasher::default();
    let context = || format!("digest the slice of `{}`", table.name);
    while let Some(row) = rows.try_next().await.map_err(|e| SliceError::database(&context(), &e))? {
        add_row(&mut hasher, &row, index, table, rewrite)
            .map_err(|e| SliceError::database(&context(), &e))?;
    }
    Ok(hasher.finish(&table.name))
}

/// Feeds one row of `quote()`d cells; `NULL` (what `quote` gives for NULL only) as `None`.
/// With `rewrite`, each cell as the restored new tenant's row has it (the maps hold `quote()`d
/// values).
fn add_row(
    hasher: &mut RowHasher,
    row: &SqliteRow,
    index: usize,
    table: &SliceTable,
    rewrite: Option<&Rewrite<'_>>,
) -> Result<(), sqlx::Error> {
    let mut cells: Vec<std::borrow::Cow<'_, [u8]>> = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let cell = row.try_get::<&[u8], _>(i)?;
        let rewritten = rewrite.zip(table.columns.get(i)).and_then(|(rw, col)| {
            let text = std::str::from_utf8(cell).ok()?;
            rw.cell(index, &col.name, text)
        });
        cells.push(match rewritten {
            Some(v) => std::borrow::Cow::Owned(v.into_bytes()),
            None => std::borrow::Cow::Borrowed(cell),
        });
    }
    hasher.add_row(cells.iter().map(|c| (c.as_ref() != b"NULL").then_some(c.as_ref())));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Restore as a new tenant

/// The new tenant id typed as the tenant is ([`Tenant::parse`]); refused when it is the old
/// tenant (the copy would rewrite the tenant's keys in place).
fn new_tenant(
    plan: &SlicePlan,
    tenant: &str,
    old: &Tenant,
    new: &str,
) -> Result<Tenant, SliceError> {
    let value = Tenant::parse(plan, new)?;
    let same = match (old, &value) {
        (Tenant::Integer(a), Tenant::Integer(b)) => a == b,
        (Tenant::Real(a), Tenant::Real(b)) => a == b,
        (Tenant::Text(a), Tenant::Text(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(SliceError::Refused(format!(
            "`as` {new:?} is the tenant {tenant:?} itself: a restore as a new tenant needs \
             another id; nothing was written"
        )));
    }
    Ok(value)
}

/// The temporary table of owner `i`'s map: `(old TEXT, new TEXT)`.
fn map_table(i: usize) -> String {
    format!("temp.rewind_map_{i}")
}

/// Runs one statement of the copy, `context` naming it in errors.
async fn run(tx: &mut SqliteConnection, sql: String, context: &str) -> Result<(), SliceError> {
    sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(db(context))?;
    Ok(())
}

/// The tenant's keys of `owner` in the schema `qualifier` (`rw_source.`, `main.`): per row,
/// `(quote(key), CAST(key AS TEXT))`.
async fn owner_keys(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    owner: &remap::Owner,
    qualifier: &str,
    value: &Tenant,
) -> Result<Vec<(String, String)>, SliceError> {
    let t = plan.table(&owner.table).ok_or_else(|| {
        SliceError::Refused(format!("the remap names `{}`, which is not planned", owner.table))
    })?;
    let sc = scope(qualifier);
    let col = Dialect::Ansi.quote(&owner.column);
    let sql = format!(
        "SELECT quote({col}), CAST({col} AS TEXT) FROM {} WHERE {} AND {col} IS NOT NULL",
        sc.table(&t.name),
        selector(plan, t, sc)
    );
    let context = format!("read the tenant's keys `{}`.`{}`", owner.table, owner.column);
    let rows = value
        .bind(sqlx::query(AssertSqlSafe(sql)).persistent(false))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(&context))?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db(&context))
}

/// Refuses a text key remapped as a uuid one ([`remap::is_text`]) whose slice holds a value
/// that is not a uuid, naming table, column and value: read on the attached source, before
/// anything is written.
async fn check_text_keys(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    new: NewTenant<'_>,
    value: &Tenant,
) -> Result<(), SliceError> {
    for owner in &new.remap.owners {
        if owner.kind == KeyKind::Uuid && remap::is_text(Engine::Sqlite, &owner.data_type) {
            for (_, text) in owner_keys(tx, plan, owner, "rw_source.", value).await? {
                remap::text_uuid(&owner.table, &owner.column, &text)?;
            }
        }
    }
    Ok(())
}

/// Allocates new integer keys `tbl` lacks in the map for `$1` (the new tenant): numbered after
/// `$3`, in the order of `$4` (a JSON array of the old keys as text).
const ALLOCATE_KEYS: &str = "INSERT INTO main.rewind_key_map (new_tenant, tbl, old_key, new_key) \
    SELECT ?1, ?2, o.value, CAST(?3 + row_number() OVER (ORDER BY o.key) AS TEXT) \
    FROM json_each(?4) AS o WHERE NOT EXISTS (SELECT 1 FROM main.rewind_key_map AS m \
      WHERE m.new_tenant = ?1 AND m.tbl = ?2 AND m.old_key = o.value)";

/// The largest value the integer key `owner` has had on the destination: in the table, in the
/// map (any new tenant's), in `sqlite_sequence` (an `AUTOINCREMENT` table's).
async fn largest_key(tx: &mut SqliteConnection, owner: &remap::Owner) -> Result<i64, SliceError> {
    let context = format!("read the largest key of `{}`.`{}`", owner.table, owner.column);
    let sql = format!(
        "SELECT max(coalesce((SELECT max(CAST({} AS INTEGER)) FROM {}), 0), \
           coalesce((SELECT max(CAST(new_key AS INTEGER)) FROM main.rewind_key_map WHERE tbl = ?1), 0))",
        Dialect::Ansi.quote(&owner.column),
        scope("main.").table(&owner.table)
    );
    let mut largest: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
        .persistent(false)
        .bind(&owner.table)
        .fetch_one(&mut *tx)
        .await
        .map_err(db(&context))?;
    let sequences: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db(&context))?;
    if sequences > 0 {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM main.sqlite_sequence WHERE name = ?1")
                .bind(&owner.table)
                .fetch_one(&mut *tx)
                .await
                .map_err(db(&context))?;
        largest = largest.max(seq.unwrap_or(0));
    }
    Ok(largest)
}

/// Builds every owner's old→new map as a temporary table ([`map_table`]), and the new tenant
/// in `temp.rewind_as`.
async fn stage_maps(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    new: NewTenant<'_>,
    old_value: &Tenant,
    new_value: &Tenant,
) -> Result<(), SliceError> {
    let context = "keep the new tenant id for the copy";
    run(tx, "DROP TABLE IF EXISTS temp.rewind_as".into(), context).await?;
    run(tx, "CREATE TEMP TABLE rewind_as (new)".into(), context).await?;
    new_value
        .bind(sqlx::query("INSERT INTO temp.rewind_as (new) VALUES (?1)"))
        .execute(&mut *tx)
        .await
        .map_err(db(context))?;
    let mut key_map_ready = false;
    for (i, owner) in new.remap.owners.iter().enumerate() {
        let context = format!("map the keys `{}`.`{}` to new ones", owner.table, owner.column);
        let table = map_table(i);
        run(tx, format!("DROP TABLE IF EXISTS {table}"), &context).await?;
        let name = table.trim_start_matches("temp.");
        run(
            tx,
            format!("CREATE TEMP TABLE {name} (old TEXT PRIMARY KEY, new TEXT NOT NULL)"),
            &context,
        )
        .await?;
        let olds: Vec<String> = owner_keys(tx, plan, owner, "rw_source.", old_value)
            .await?
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        match owner.kind {
            KeyKind::Uuid => {
                let pairs: Vec<(String, String)> = olds
                    .into_iter()
                    .map(|o| {
                        let n = remap::new_key_uuid(Engine::Sqlite, new.id, owner, &o)?;
                        Ok((o, n))
                    })
                    .collect::<Result<_, SliceError>>()?;
                let json = serde_json::to_string(&pairs).map_err(|e| SliceError::Database {
                    message: format!("{context}: {e}"),
                    transient: false,
                })?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (old, new) SELECT json_extract(value, '$[0]'), \
                     json_extract(value, '$[1]') FROM json_each(?1)"
                )))
                .persistent(false)
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(db(&context))?;
            }
            KeyKind::Integer => {
                if !key_map_ready {
                    run(tx, CREATE_KEY_MAP.into(), "create the key map rewind_key_map").await?;
                    key_map_ready = true;
                }
                let base = largest_key(tx, owner).await?;
                let json = serde_json::to_string(&olds).map_err(|e| SliceError::Database {
                    message: format!("{context}: {e}"),
                    transient: false,
                })?;
                sqlx::query(ALLOCATE_KEYS)
                    .bind(new.id)
                    .bind(&owner.table)
                    .bind(base)
                    .bind(json)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(&context))?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (old, new) SELECT old_key, new_key \
                     FROM main.rewind_key_map WHERE new_tenant = ?1 AND tbl = ?2"
                )))
                .persistent(false)
                .bind(new.id)
                .bind(&owner.table)
                .execute(&mut *tx)
                .await
                .map_err(db(&context))?;
            }
        }
    }
    Ok(())
}

/// Records (in [`remap::KEY_MAP`], in the copy's transaction) that a copy wrote `new_tenant`,
/// or refuses it when the destination already had `deleted` rows of it that no
/// earlier copy as it wrote ([`remap::refuse_existing`]).
async fn claim_new_tenant(
    tx: &mut SqliteConnection,
    new_tenant: &str,
    deleted: u64,
) -> Result<(), SliceError> {
    let context = "record the new tenant in rewind_key_map";
    run(tx, CREATE_KEY_MAP.into(), "create the key map rewind_key_map").await?;
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM main.rewind_key_map WHERE new_tenant = ?1 AND tbl = ?2",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(context))?;
    if deleted > 0 && claimed == 0 {
        return Err(remap::refuse_existing(new_tenant, deleted));
    }
    sqlx::query(
        "INSERT OR IGNORE INTO main.rewind_key_map (new_tenant, tbl, old_key, new_key) \
         VALUES (?1, ?2, '', '')",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .execute(&mut *tx)
    .await
    .map_err(db(context))?;
    Ok(())
}

/// Creates [`remap::KEY_MAP`] in `main` if it is missing.
const CREATE_KEY_MAP: &str = "CREATE TABLE IF NOT EXISTS main.rewind_key_map (\
    new_tenant TEXT NOT NULL, tbl TEXT NOT NULL, old_key TEXT NOT NULL, new_key TEXT NOT NULL, \
    PRIMARY KEY (new_tenant, tbl, old_key))";

/// Drops the temporary tables of [`stage_maps`].
async fn drop_maps(tx: &mut SqliteConnection, remap: &remap::RemapPlan) -> Result<(), SliceError> {
    let context = "drop the copy's temporary map tables";
    for i in 0..remap.owners.len() {
        run(tx, format!("DROP TABLE IF EXISTS {}", map_table(i)), context).await?;
    }
    run(tx, "DROP TABLE IF EXISTS temp.rewind_as".into(), context).await
}

/// Inserts the source's slice rows of the plan's table `i` with their keys remapped.
async fn insert_remapped(
    tx: &mut SqliteConnection,
    plan: &SlicePlan,
    i: usize,
    remap: &remap::RemapPlan,
    old_value: &Tenant,
) -> Result<u64, SliceError> {
    let Some(table) = plan.tables.get(i) else { return Ok(0) };
    let source = scope("rw_source.");
    let cols = Dialect::Ansi.list(table.copied().map(|c| c.name.as_str()));
    let exprs: Vec<String> = table
        .copied()
        .map(|c| {
            let col = format!("s.{}", Dialect::Ansi.quote(&c.name));
            match remap.source(i, &c.name) {
                None => col,
                Some(Source::Tenant) => format!(
                    "CASE WHEN {col} = ?1 THEN (SELECT new FROM temp.rewind_as) ELSE {col} END"
                ),
                Some(Source::Key(k)) => {
                    let new = match remap.owners.get(k).map(|o| o.kind) {
                        Some(KeyKind::Integer) => "CAST(m.new AS INTEGER)",
                        _ => "m.new",
                    };
                    format!(
                        "COALESCE((SELECT {new} FROM {} AS m WHERE m.old = CAST({col} AS TEXT)), {col})",
                        map_table(k)
                    )
                }
            }
        })
        .collect();
    let sql = format!(
        "INSERT INTO {} ({cols}) SELECT {} FROM {} AS s WHERE {}",
        scope("main.").table(&table.name),
        exprs.join(", "),
        source.table(&table.name),
        selector(plan, table, source)
    );
    let done = old_value
        .bind(sqlx::query(AssertSqlSafe(sql)).persistent(false))
        .execute(&mut *tx)
        .await
        .map_err(db(format_args!("insert the slice of `{}` as the new tenant", table.name)))?;
    Ok(done.rows_affected())
}

/// The integer keys' maps of `new_tenant` kept on `conn` ([`remap::KEY_MAP`]), by table:
/// old → new. Empty when the map table does not exist.
pub async fn key_maps(
    conn: &mut SqliteConnection,
    new_tenant: &str,
) -> Result<BTreeMap<String, HashMap<String, String>>, SliceError> {
    let context = "read the key map rewind_key_map";
    let exists: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = 'rewind_key_map'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db(context))?;
    let mut out: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    if exists == 0 {
        return Ok(out);
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tbl, old_key, new_key FROM main.rewind_key_map WHERE new_tenant = ?1",
    )
    .bind(new_tenant)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(context))?;
    for (tbl, old, new) in rows {
        out.entry(tbl).or_default().insert(old, new);
    }
    Ok(out)
}

/// The digest of the tenant's slice on `conn` (the source) as restored as the new tenant
/// `new` ([`copy_as`]; `maps`: [`key_maps`] of the destination). Equal to [`digest`] of the
/// new tenant on the destination when the copy restored it.
pub async fn digest_as(
    conn: &mut SqliteConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
    maps: &BTreeMap<String, HashMap<String, String>>,
) -> Result<SliceDigest, SliceError> {
    check_engine(plan)?;
    let value = Tenant::parse(plan, tenant)?;
    let new_value = new_tenant(plan, tenant, &value, new.id)?;
    let mut tx = conn.begin().await.map_err(db("begin the digest"))?;
    let mut quoted = Vec::new();
    for v in [&value, &new_value] {
        let q: String = v
            .bind(sqlx::query("SELECT quote(?1)"))
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("quote the tenant ids"))?;
        quoted.push(q);
    }
    let mut owner_maps = HashMap::new();
    for (i, owner) in new.remap.owners.iter().enumerate() {
        let map: HashMap<String, String> = match owner.kind {
            KeyKind::Uuid => owner_keys(&mut tx, plan, owner, "main.", &value)
                .await?
                .into_iter()
                .map(|(q, text)| {
                    let n = remap::new_key_uuid(Engine::Sqlite, new.id, owner, &text)?;
                    Ok((q, format!("'{n}'")))
                })
                .collect::<Result<_, SliceError>>()?,
            KeyKind::Integer => maps.get(&owner.table).cloned().unwrap_or_default(),
        };
        owner_maps.insert(i, map);
    }
    let new_tenant = quoted.pop().unwrap_or_default();
    let old_tenant = quoted.pop().unwrap_or_default();
    let rewrite = Rewrite { remap: new.remap, old_tenant, new_tenant, maps: owner_maps };
    let mut out = SliceDigest::default();
    for (i, table) in plan.tables.iter().enumerate() {
        out.tables.push(digest_table(&mut tx, plan, i, table, &value, Some(&rewrite)).await?);
    }
    tx.commit().await.map_err(db("end the digest"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinities_follow_sqlite() {
        assert_eq!(affinity("BIGINT"), Affinity::Integer);
        assert_eq!(affinity("varchar(36)"), Affinity::Text);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(affinity("DECIMAL(10,2)"), Affinity::Numeric);
        // "POINT" contains "INT": SQLite's rule 1 wins.
        assert_eq!(affinity("POINT"), Affinity::Integer);
    }

    #[test]
    fn tenants_take_the_root_key_type() {
        let plan = |data_type: &str| SlicePlan {
            engine: Engine::Sqlite,
            root: Some(crate::plan::RootKey {
                table: "sites".into(),
                column: "id".into(),
                data_type: data_type.into(),
            }),
            tables: Vec::new(),
            deferred: Vec::new(),
            tenant_column: None,
            references: Vec::new(),
        };
        assert!(matches!(Tenant::parse(&plan("BIGINT"), "-42"), Ok(Tenant::Integer(-42))));
        assert!(matches!(Tenant::parse(&plan("BIGINT"), "4x"), Err(SliceError::BadTenant { .. })));
        assert!(matches!(Tenant::parse(&plan("REAL"), "1.5"), Ok(Tenant::Real(v)) if v == 1.5));
        assert!(matches!(Tenant::parse(&plan("REAL"), "NaN"), Err(SliceError::BadTenant { .. })));
        assert!(matches!(Tenant::parse(&plan("UUID"), "4x"), Ok(Tenant::Text(t)) if t == "4x"));
        assert!(matches!(Tenant::parse(&plan(""), "4x"), Ok(Tenant::Text(_))));
        // No declared type: an integer as SQLite writes one is bound as one.
        assert!(matches!(Tenant::parse(&plan(""), "-42"), Ok(Tenant::Integer(-42))));
        assert!(matches!(Tenant::parse(&plan(""), "042"), Ok(Tenant::Text(t)) if t == "042"));
        assert!(matches!(Tenant::parse(&plan("BLOB"), "42"), Ok(Tenant::Text(_))));
    }

    #[test]
    fn uri_escapes_what_sqlite_would_read() {
        assert_eq!(
            read_only_uri(Path::new("/tmp/a b?#%.db")),
            "file:/tmp/a%20b%3F%23%25.db?mode=ro"
        );
    }

    /// The source is attached read-only, also under a name a URI would misread: a write to it
    /// fails, and the file is the one asked for.
    #[tokio::test]
    async fn the_source_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("odd name?#%");
        std::fs::create_dir(&folder).unwrap();
        let source = folder.join("backup.db");
        let opts =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&source).create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let bytes = std::fs::read(&source).unwrap();
        let dest = dir.path().join("live.db");
        let opts =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&dest).create_if_missing(true);
        let mut dst = SqliteConnection::connect_with(&opts).await.unwrap();
        attach(&mut dst, &source).await.unwrap();
        let n: i64 =
            sqlx::query_scalar("SELECT a FROM rw_source.t").fetch_one(&mut dst).await.unwrap();
        assert_eq!(n, 1);
        for write in ["INSERT INTO rw_source.t VALUES (2)", "CREATE TABLE rw_source.u (b)"] {
            let e = sqlx::query(write).execute(&mut dst).await.unwrap_err();
            assert!(crate::error::describe(&e).contains("readonly database"), "{write}: {e}");
        }
        // A second attach (a cancelled copy left one) replaces it.
        attach(&mut dst, &source).await.unwrap();
        detach(&mut dst).await.unwrap();
        assert_eq!(std::fs::read(&source).unwrap(), bytes);
        assert!(attached_file(&mut dst, SOURCE).await.unwrap().is_none());
    }
}
