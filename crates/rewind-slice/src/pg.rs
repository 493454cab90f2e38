//! PostgreSQL: the catalog of `current_schema()` ([`schema`]), a slice copied by binary `COPY`
//! from a source to a destination in one destination transaction ([`copy`]), and a slice's
//! digest ([`digest`]).
//!
//! **The tenant id** is converted once, on the source, by the server itself
//! (`quote_literal(CAST($1::text AS <root key type>))`, the type without its modifier), and the
//! quoted literal with its cast stands for the tenant in every statement: `COPY` takes no
//! parameters, and a value typed by the server is compared as the key's type (uuid, bigint, …),
//! never as text. An id that does not parse, or does not fit the key's modifier (`'acme-eu'`
//! for `character varying(4)`, which a cast would truncate to another tenant's `'acme'`), is
//! [`SliceError::BadTenant`]. With a root, a tenant the source has no root row for is refused
//! before anything is deleted.
//!
//! **Text.** Source, destination and digest transactions pin the settings that a value's text
//! depends on (`DateStyle`, `TimeZone`, `IntervalStyle`, `bytea_output`, `extra_float_digits`,
//! `lc_monetary`) with `SET LOCAL`: a digest hashes that text, and the text-fallback `COPY`
//! writes it on one side and parses it on the other, whatever a pooled connection's session
//! was left with.
//!
//! **Triggers and references.** The destination transaction runs with
//! `SET LOCAL session_replication_role = replica`: user triggers (an audit log) and the
//! foreign-key triggers do not fire, so rows go in table by table in any order and the restore
//! is not logged as user activity. Triggers enabled `ALWAYS` or `REPLICA` would still fire: a
//! planned table with one on the destination is refused, naming it. Because references are then
//! not enforced, the copy checks them itself before it commits: the restored rows' keys, and
//! the rows outside the slice (in tables the plan leaves out, or another tenant's) that
//! referenced a row the copy deleted and did not put back. A role that may not set the parameter
//! (not a superuser, no `GRANT SET ON PARAMETER session_replication_role`) copies in *checked*
//! mode instead: the plan's deferrable constraints are deferred, its `set_after` columns are
//! inserted as NULL and set afterwards; a planned table with user triggers is then refused, as
//! the triggers would fire, and so is a foreign key from a table the plan leaves out into a
//! planned table with `ON DELETE CASCADE`, `SET NULL` or `SET DEFAULT`, as the deletes would
//! reach that table.
//!
//! **Sequences** of identity and serial columns are the destination's own (read from its
//! catalog at copy time: the plan's come from the catalog it was made from), advanced past the
//! largest value in the table after the copy, never moved backwards. A column fed by a sequence
//! on one side only is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Either, PgConnection, Row};

use crate::error::db;
use crate::plan::{SlicePlan, SliceTable, Via};
use crate::remap::{self, KeyKind, NewTenant, Rewrite, Source};
use crate::schema::{Column, Engine, ForeignKey, Schema, Table};
use crate::sql::{Dialect, Scope, selector};
use crate::{CopyReport, RowHasher, SliceDigest, SliceError, TableCopy};

const ANSI: Dialect = Dialect::Ansi;

/// `COPY` output is gathered into chunks of about this size before it is sent on: one message
/// per row would cost a write per row.
const CHUNK: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Catalog

/// Ordinary and partitioned tables of `current_schema()` (not partitions).
const TABLES: &str = "SELECT c.relname::text FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
    ORDER BY c.relname";

/// Columns of those tables in column order: name, `format_type`, NOT NULL, generated, and the
/// sequence of an identity or serial column.
const COLUMNS: &str = "SELECT c.relname::text, a.attname::text, \
      format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> '', \
      pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_attribute a ON a.attrelid = c.oid \
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
      AND a.attnum > 0 AND NOT a.attisdropped \
    ORDER BY c.relname, a.attnum";

/// Primary key columns in key order.
const PRIMARY_KEYS: &str = "SELECT c.relname::text, a.attname::text \
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord) \
    JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum \
    WHERE n.nspname = current_schema() AND k.contype = 'p' \
    ORDER BY c.relname, u.ord";

/// Foreign keys between tables of the schema, column pairs in key order. Constraints that a
/// partitioned table's key clones onto partitions (`conparentid <> 0`) are left out.
const FOREIGN_KEYS: &str = "SELECT k.conname::text, c.relname::text, p.relname::text, \
      ca.attname::text, pa.attname::text, k.condeferrable \
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
    JOIN pg_class p ON p.oid = k.confrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    CROSS JOIN LATERAL unnest(k.conkey, k.confkey) WITH ORDINALITY AS u(ck, pk, ord) \
    JOIN pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = u.ck \
    JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = u.pk \
    WHERE n.nspname = current_schema() AND p.relnamespace = n.oid \
      AND k.contype = 'f' AND k.conparentid = 0 \
    ORDER BY c.relname, k.conname, u.ord";

/// User triggers (not the foreign keys' internal ones).
const TRIGGERS: &str = "SELECT c.relname::text, t.tgname::text \
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE n.nspname = current_schema() AND NOT t.tgisinternal \
    ORDER BY c.relname, t.tgname";

/// The tables of the connection's `current_schema()`, read from `pg_catalog`.
pub async fn schema(conn: &mut PgConnection) -> Result<Schema, SliceError> {
    let mut tables = BTreeMap::new();
    for (name,) in
        fetch_all::<(String,)>(conn, TABLES, "read the tables of the current schema").await?
    {
        tables.insert(name.clone(), Table::named(name));
    }
    let columns = fetch_all::<(String, String, String, bool, bool, Option<String>)>(
        conn,
        COLUMNS,
        "read the columns of the current schema",
    )
    .await?;
    for (table, name, data_type, not_null, generated, sequence) in columns {
        if let Some(t) = tables.get_mut(&table) {
            t.columns.push(Column { name, data_type, nullable: !not_null, generated, sequence });
        }
    }
    for (table, column) in
        fetch_all::<(String, String)>(conn, PRIMARY_KEYS, "read the primary keys").await?
    {
        if let Some(t) = tables.get_mut(&table) {
            t.primary_key.push(column);
        }
    }
    read_foreign_keys(conn, &mut tables).await?;
    for (table, trigger) in
        fetch_all::<(String, String)>(conn, TRIGGERS, "read the triggers").await?
    {
        if let Some(t) = tables.get_mut(&table) {
            t.triggers.push(trigger);
        }
    }
    Ok(Schema { engine: Engine::Postgres, tables })
}

/// Adds each table's foreign keys, one row per column pair, to `tables`.
async fn read_foreign_keys(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, Table>,
) -> Result<(), SliceError> {
    let rows = fetch_all::<(String, String, String, String, String, bool)>(
        conn,
        FOREIGN_KEYS,
        "read the foreign keys",
    )
    .await?;
    for (name, child, parent, column, parent_column, deferrable) in rows {
        if !tables.contains_key(&parent) {
            continue;
        }
        let Some(t) = tables.get_mut(&child) else { continue };
        let fk = match t.foreign_keys.last_mut() {
            Some(fk) if fk.name == name => fk,
            _ => {
                t.foreign_keys.push(ForeignKey {
                    name,
                    columns: Vec::new(),
                    parent,
                    parent_columns: Vec::new(),
                    deferrable,
                    declared: false,
                });
                t.foreign_keys.last_mut().unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        fk.columns.push(column);
        fk.parent_columns.push(parent_column);
    }
    Ok(())
}

async fn fetch_all<T>(
    conn: &mut PgConnection,
    sql: &'static str,
    context: &str,
) -> Result<Vec<T>, SliceError>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as::<_, T>(sql).fetch_all(&mut *conn).await.map_err(db(context))
}

// ---------------------------------------------------------------------------------------------
// The tenant

/// The tenant id as the source server typed it.
struct Tenant {
    /// The SQL that stands for the tenant: a literal the server quoted, cast to the key's type
    /// without its modifier (`'…'::uuid`, `'acme'::character varying`).
    sql: String,
    /// With `count_root`: the root's rows whose key is the tenant (0 or 1).
    root_rows: Option<i64>,
}

/// The tenant `tenant` of `plan`'s slice, converted by the server to the key's type (see
/// [`Tenant`]); with `count_root` and a root, also how many root rows hold it. An id that does
/// not parse as the key's type, or does not fit its modifier (`'acme-eu'` for
/// `character varying(4)`, `1.555` for `numeric(10,2)`: an explicit cast would truncate or
/// round it into another tenant's id), is [`SliceError::BadTenant`].
async fn tenant_sql(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    count_root: bool,
) -> Result<Tenant, SliceError> {
    let (table, column, data_type) = tenant_key(plan)?;
    let bad = || SliceError::BadTenant {
        tenant: tenant.to_owned(),
        table: table.to_owned(),
        column: column.to_owned(),
        data_type: data_type.to_owned(),
    };
    let base = base_type(conn, data_type).await?;
    let fits = if base == data_type {
        "true".to_owned()
    } else {
        format!("rewind_v = CAST($1::text AS {data_type})")
    };
    let count = match &plan.root {
        Some(root) if count_root => format!(
            "(SELECT count(*) FROM {} WHERE {} = rewind_v)",
            ANSI.quote(&root.table),
            ANSI.quote(&root.column)
        ),
        _ => "NULL::int8".to_owned(),
    };
    let sql = format!(
        "SELECT quote_literal(rewind_v), {fits}, {count} \
         FROM (SELECT CAST($1::text AS {base}) AS rewind_v) AS rewind_t"
    );
    let row =
        sqlx::query(AssertSqlSafe(sql)).persistent(false).bind(tenant).fetch_one(&mut *conn).await;
    match row {
        Ok(row) => {
            let context = "quote the tenant id";
            let literal: String = row.try_get(0).map_err(db(context))?;
            let fits: bool = row.try_get(1).map_err(db(context))?;
            let root_rows: Option<i64> = row.try_get(2).map_err(db(context))?;
            if !fits {
                return Err(bad());
            }
            Ok(Tenant { sql: format!("{literal}::{base}"), root_rows })
        }
        Err(e)
            if matches!(
                sqlstate(&e).as_deref(),
                Some("22P02" | "22003" | "22007" | "22008" | "22001")
            ) =>
        {
            Err(bad())
        }
        Err(e) => Err(SliceError::database(
            &format!("convert the tenant id to `{data_type}` (the key `{table}`.`{column}`)"),
            &e,
        )),
    }
}

/// `data_type` without its modifier (`character varying(4)` → `character varying`,
/// `character(4)` → `bpchar`, `interval day to second(3)` → `interval`), as the server
/// writes it. Asked of the server only when the type may have one (a modifier is written in
/// parentheses, except an interval's fields).
async fn base_type(conn: &mut PgConnection, data_type: &str) -> Result<String, SliceError> {
    if !(data_type.contains('(') || data_type.starts_with("interval ")) {
        return Ok(data_type.to_owned());
    }
    let base: Option<String> = sqlx::query_scalar("SELECT format_type(to_regtype($1), -1)")
        .persistent(false)
        .bind(data_type)
        .fetch_one(&mut *conn)
        .await
        .map_err(db(format!("read the type `{data_type}` without its modifier")))?;
    Ok(base.unwrap_or_else(|| data_type.to_owned()))
}

/// The key that holds the tenant id: the root's, or else the first table's tenant column.
fn tenant_key(plan: &SlicePlan) -> Result<(&str, &str, &str), SliceError> {
    if let Some(root) = &plan.root {
        return Ok((&root.table, &root.column, &root.data_type));
    }
    for t in &plan.tables {
        for via in &t.via {
            if let Via::TenantColumn { column } = via {
                let c = t.columns.iter().find(|c| &c.name == column).ok_or_else(|| {
                    SliceError::Refused(format!(
                        "the plan names tenant column `{}`.`{column}` that the table does not have",
                        t.name
                    ))
                })?;
                return Ok((&t.name, &c.name, &c.data_type));
            }
        }
    }
    Err(SliceError::Refused("the plan has neither a root nor a tenant column".to_owned()))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

// ---------------------------------------------------------------------------------------------
// Copy

/// The session settings that the text form of a value depends on, pinned for the transaction
/// (`SET LOCAL`): a digest hashes that text, a text `COPY` writes it on the source and parses
/// it on the destination, and the tenant's literal is quoted on one side and read on the other.
/// A pooled connection may carry anything a user's `sql` step set (`DateStyle = 'SQL, DMY'`,
/// `extra_float_digits = -3`, …).
const PIN_TEXT: &str = "SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL TimeZone = 'UTC'; \
    SET LOCAL IntervalStyle = 'postgres'; SET LOCAL bytea_output = 'hex'; \
    SET LOCAL extra_float_digits = 1; SET LOCAL lc_monetary = 'C'";

/// Begins a source (or digest) transaction: one snapshot for every table, text settings pinned
/// ([`PIN_TEXT`]). The catalog queries a copy runs (prepared, cached per connection) keep one
/// generic plan instead of being planned again at each copy: planning them costs more than
/// running them.
fn begin_read() -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
         SET LOCAL plan_cache_mode = force_generic_plan; {PIN_TEXT}"
    )
}

/// How the destination transaction keeps references and triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `session_replication_role = replica`: no trigger fires (but `ENABLE ALWAYS` and
    /// `ENABLE REPLICA` ones, which are refused); rewind checks references.
    Replica,
    /// The role may not set it: constraints are enforced, cycles broken by the plan.
    Checked,
}

/// Copies the tenant's slice from `src` to `dst`: deletes the tenant's rows of every planned
/// table on `dst` (children first) and inserts the source's (parents first), in one destination
/// transaction, reading the source in one `REPEATABLE READ` snapshot. Either everything is
/// written or nothing: on any error both transactions are rolled back (best effort; a caller
/// that dropped this future mid-way closes both connections).
///
/// With a root, a tenant whose root row the source does not have is refused before anything
/// is deleted: the copy would empty the tenant's slice on the destination.
pub async fn copy(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(src, dst, plan, tenant, None).await
}

/// Copies the tenant's slice from `src` to `dst` as the new tenant `new` ([`crate::remap`]):
/// deletes the new tenant's rows on `dst` (children first) and inserts the source's rows
/// with their keys remapped (parents first), in one destination transaction; the integer keys'
/// map is kept in the destination's [`remap::KEY_MAP`], written in that transaction. The old
/// tenant's rows are only read. Each table's rows are staged by `COPY` in a temporary table on
/// the destination, then written by one `INSERT … SELECT` that looks every changed column up
/// in the maps (temporary tables too): no value is spliced into SQL but the tenant ids, as the
/// server quoted them.
pub async fn copy_as(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(src, dst, plan, tenant, Some(new)).await
}

async fn copy_maybe_as(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: Option<NewTenant<'_>>,
) -> Result<CopyReport, SliceError> {
    if plan.engine != Engine::Postgres {
        return Err(SliceError::Refused(format!(
            "a plan for {} cannot be copied on PostgreSQL",
            plan.engine.name()
        )));
    }
    match copy_in_transactions(src, dst, plan, tenant, new).await {
        Ok(report) => Ok(report),
        Err(e) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *dst).await;
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *src).await;
            Err(e)
        }
    }
}

async fn copy_in_transactions(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: Option<NewTenant<'_>>,
) -> Result<CopyReport, SliceError> {
    // The two connections' opening round trips overlap.
    let (source, destination) =
        futures::join!(open_source(src, plan, tenant), open_destination(dst, plan));
    let (tenant_sql, src_cols) = source?;
    let (mode, dst_cols, refs) = destination?;
    refuse_empty_source(plan, tenant, &tenant_sql)?;
    let new_sql = match new {
        Some(n) => Some(new_tenant_sql(src, plan, tenant, &tenant_sql, n.id).await?),
        None => None,
    };
    let src_scope = Scope { dialect: ANSI, qualifier: "", tenant: &tenant_sql.sql };
    // The destination's slice is the new tenant's when restoring as one.
    let scope = Scope { tenant: new_sql.as_deref().unwrap_or(&tenant_sql.sql), ..src_scope };
    let binary = check_columns(plan, &src_cols, &dst_cols)?;
    let checks = match mode {
        Mode::Checked => {
            refuse_triggers(plan)?;
            refuse_cascades(&refs)?;
            defer_constraints(dst, plan).await?;
            Checks::default()
        }
        Mode::Replica => {
            refuse_replica_triggers(plan, &dst_cols)?;
            Checks::new(plan, scope, &refs)
        }
    };
    if let Some(n) = new {
        check_text_keys(src, plan, n, src_scope).await?;
    }
    let (deleted, before) = delete(dst, plan, scope, mode, &checks).await?;
    if let Some(n) = new {
        claim_new_tenant(dst, n.id, deleted.iter().sum()).await?;
    }
    let remapping = match (new, &new_sql) {
        (Some(n), Some(new_sql)) => {
            stage_maps(src, dst, plan, n, src_scope, &dst_cols).await?;
            Some(Remapping { new: n, old_sql: &tenant_sql.sql, new_sql })
        }
        _ => None,
    };
    let mut report = CopyReport::default();
    for (i, (t, deleted)) in plan.tables.iter().zip(deleted).enumerate() {
        let binary = binary.contains(&t.name);
        let inserted = match &remapping {
            Some(r) => insert_remapped(src, dst, plan, i, src_scope, mode, binary, r).await?,
            None => insert(src, dst, plan, t, scope, mode, binary).await?,
        };
        report.tables.push(TableCopy { table: t.name.clone(), deleted, inserted });
    }
    if mode == Mode::Checked {
        match &remapping {
            Some(r) => set_after_remapped(dst, plan, r).await?,
            None => set_after(src, dst, plan, scope, &binary).await?,
        }
        end_source(src).await?;
        advance_sequences(dst, plan, &dst_cols).await?;
    } else {
        let (ended, checked) = futures::join!(end_source(src), async {
            checks.after(dst, &before).await?;
            advance_sequences(dst, plan, &dst_cols).await
        });
        ended?;
        checked?;
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *dst)
        .await
        .map_err(db("commit the destination transaction"))?;
    Ok(report)
}

/// Begins the source transaction; returns the tenant (with the source's root rows for it) and
/// the planned tables' columns.
async fn open_source(
    src: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<(Tenant, SideTables), SliceError> {
    sqlx::raw_sql(AssertSqlSafe(begin_read()))
        .execute(&mut *src)
        .await
        .map_err(db("begin the source transaction"))?;
    let tenant = tenant_sql(src, plan, tenant, true).await?;
    Ok((tenant, catalog_columns(src, plan, "source").await?))
}

/// A copy whose source has no root row for the tenant (a wrong id, a tenant newer than the
/// backup) would delete the tenant's rows on the destination and insert none: refused.
fn refuse_empty_source(plan: &SlicePlan, tenant: &str, t: &Tenant) -> Result<(), SliceError> {
    match (&plan.root, t.root_rows) {
        (Some(root), Some(0)) => Err(SliceError::Refused(format!(
            "the source has no `{}` row with {} {tenant:?}: nothing to restore; nothing was deleted",
            root.table, root.column
        ))),
        _ => Ok(()),
    }
}

/// Ends the source transaction (read only: nothing to keep).
async fn end_source(src: &mut PgConnection) -> Result<(), SliceError> {
    sqlx::raw_sql("COMMIT").execute(&mut *src).await.map_err(db("end the source transaction"))?;
    Ok(())
}

/// Begins the destination transaction; returns its [`Mode`], the planned tables' columns and
/// the foreign keys into and out of planned tables ([`read_references`]: replica mode checks
/// them before commit, checked mode refuses the delete actions that would reach outside the
/// plan).
async fn open_destination(
    dst: &mut PgConnection,
    plan: &SlicePlan,
) -> Result<(Mode, SideTables, Vec<(Reference, bool)>), SliceError> {
    let mode = begin_destination(dst).await?;
    let columns = catalog_columns(dst, plan, "destination").await?;
    let refs = read_references(dst, plan).await?;
    Ok((mode, columns, refs))
}

/// Begins the destination transaction in [`Mode::Replica`] if the role may, else in
/// [`Mode::Checked`]; text settings pinned ([`PIN_TEXT`]).
async fn begin_destination(dst: &mut PgConnection) -> Result<Mode, SliceError> {
    let replica = sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; {PIN_TEXT}; \
         SAVEPOINT rewind_mode; SET LOCAL session_replication_role = replica; \
         RELEASE SAVEPOINT rewind_mode"
    )))
    .execute(&mut *dst)
    .await;
    match replica {
        Ok(_) => Ok(Mode::Replica),
        Err(e) if sqlstate(&e).as_deref() == Some("42501") => {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT rewind_mode; RELEASE SAVEPOINT rewind_mode")
                .execute(&mut *dst)
                .await
                .map_err(db("continue the destination transaction in checked mode"))?;
            Ok(Mode::Checked)
        }
        Err(e) => Err(SliceError::database(
            "begin the destination transaction (session_replication_role = replica)",
            &e,
        )),
    }
}

/// In checked mode user triggers would fire during the copy: refused, naming the tables.
fn refuse_triggers(plan: &SlicePlan) -> Result<(), SliceError> {
    let with: Vec<String> = plan
        .tables
        .iter()
        .filter(|t| !t.triggers.is_empty())
        .map(|t| format!("`{}` ({})", t.name, t.triggers.join(", ")))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    Err(SliceError::Refused(format!(
        "the destination role may not set session_replication_role, so the user triggers of {} \
         would fire during the copy; a superuser can allow it: \
         GRANT SET ON PARAMETER session_replication_role TO <role>",
        with.join(", ")
    )))
}

/// In replica mode, triggers enabled `ALWAYS` or `REPLICA` on the destination still fire:
/// refused, naming them.
fn refuse_replica_triggers(plan: &SlicePlan, dst: &SideTables) -> Result<(), SliceError> {
    let with: Vec<String> = plan
        .tables
        .iter()
        .filter_map(|t| {
            let triggers = &dst.get(&t.name)?.replica_triggers;
            (!triggers.is_empty()).then(|| format!("`{}` ({})", t.name, triggers.join(", ")))
        })
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    Err(SliceError::Refused(format!(
        "the triggers of {} on the destination are enabled ALWAYS or REPLICA, so they would \
         fire during the copy although it runs with session_replication_role = replica; \
         ALTER TABLE … ENABLE TRIGGER … makes them ordinary triggers again",
        with.join(", ")
    )))
}

/// In checked mode the server runs the delete actions of foreign keys: a key from a table the
/// plan leaves out into a planned table with `ON DELETE CASCADE`, `SET NULL` or `SET DEFAULT`
/// would delete or change that table's rows when the copy deletes the tenant's: refused,
/// naming each constraint and its tables.
fn refuse_cascades(refs: &[(Reference, bool)]) -> Result<(), SliceError> {
    let hits: Vec<String> = refs
        .iter()
        .filter(|(_, planned_child)| !planned_child)
        .filter_map(|(r, _)| {
            let action = match r.on_delete.as_str() {
                "c" => "CASCADE",
                "n" => "SET NULL",
                "d" => "SET DEFAULT",
                _ => return None,
            };
            Some(format!(
                "constraint `{}` of `{}` → `{}` (ON DELETE {action})",
                r.name, r.child, r.parent
            ))
        })
        .collect();
    if hits.is_empty() {
        return Ok(());
    }
    Err(SliceError::Refused(format!(
        "the destination role may not set session_replication_role, so deleting the tenant's \
         rows would run the delete actions of {} on rows the plan leaves out; include those \
         tables in the plan, or let the role set it: \
         GRANT SET ON PARAMETER session_replication_role TO <role>",
        hits.join(", ")
    )))
}

async fn defer_constraints(dst: &mut PgConnection, plan: &SlicePlan) -> Result<(), SliceError> {
    if plan.deferred.is_empty() {
        return Ok(());
    }
    let names = ANSI.list(plan.deferred.iter().map(|(_, c)| c.as_str()));
    sqlx::raw_sql(AssertSqlSafe(format!("SET CONSTRAINTS {names} DEFERRED")))
        .execute(&mut *dst)
        .await
        .map_err(db(format!("defer the constraints {names}")))?;
    Ok(())
}

/// One column of a planned table as one side's catalog has it.
struct SideColumn {
    /// `format_type` with the modifier.
    data_type: String,
    generated: bool,
    /// The type (and its element type) has binary send and receive functions.
    binary_io: bool,
    /// The sequence that feeds the column on this side (identity or serial), as
    /// `pg_get_serial_sequence` gives it: qualified and quoted.
    sequence: Option<String>,
}

/// A planned table as one side's catalog has it.
#[derive(Default)]
struct SideTable {
    columns: BTreeMap<String, SideColumn>,
    /// User triggers that fire even with `session_replication_role = replica` (`ENABLE ALWAYS`
    /// and `ENABLE REPLICA`).
    replica_triggers: Vec<String>,
}

/// The planned tables on one side, by name.
type SideTables = BTreeMap<String, SideTable>;

/// The planned tables' columns (name, type, generated, binary I/O, sequence) and the user
/// triggers that fire in replica mode (repeated on each column's row). The sequence is read
/// only for columns that can have one (identity, or a default).
const PLANNED_COLUMNS: &str = "SELECT c.relname::text, a.attname::text, \
      format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', \
      t.typsend::oid <> 0 AND t.typreceive::oid <> 0 \
        AND coalesce(e.typsend::oid <> 0 AND e.typreceive::oid <> 0, true), \
      CASE WHEN a.attidentity <> '' OR a.atthasdef \
        THEN pg_get_serial_sequence(c.oid::regclass::text, a.attname) END, \
      ARRAY(SELECT g.tgname::text FROM pg_trigger g WHERE g.tgrelid = c.oid \
            AND NOT g.tgisinternal AND g.tgenabled IN ('A', 'R') ORDER BY 1) \
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
    JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type e ON e.oid = t.typelem \
    WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
      AND c.relkind IN ('r', 'p') AND c.relname = ANY($1) \
      AND a.attnum > 0 AND NOT a.attisdropped";

/// The planned tables on one side (`side` names it in errors).
async fn catalog_columns(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    side: &str,
) -> Result<SideTables, SliceError> {
    let names: Vec<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    type Row = (String, String, String, bool, bool, Option<String>, Vec<String>);
    let rows = sqlx::query_as::<_, Row>(PLANNED_COLUMNS)
        .bind(&names)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("read the planned tables' columns on the {side}")))?;
    let mut out = SideTables::new();
    for (table, column, data_type, generated, binary_io, sequence, triggers) in rows {
        let t = out.entry(table).or_default();
        t.replica_triggers = triggers;
        t.columns.insert(column, SideColumn { data_type, generated, binary_io, sequence });
    }
    Ok(out)
}

/// Refuses a copy between sides whose planned tables differ from the plan in a copied column
/// (missing, another type, generated on one side, fed by a sequence on one side only, or a
/// column the plan does not know). Returns the tables whose every copied column's type (and
/// element type) has binary send and receive functions: those are copied in binary, the
/// others (`aclitem`, extension types without binary I/O) in text.
fn check_columns(
    plan: &SlicePlan,
    src: &SideTables,
    dst: &SideTables,
) -> Result<BTreeSet<String>, SliceError> {
    let mut binary = BTreeSet::new();
    for t in &plan.tables {
        let mut binary_io = true;
        for (side, tables) in [("source", src), ("destination", dst)] {
            let Some(side_table) = tables.get(&t.name) else {
                return Err(SliceError::Refused(format!(
                    "table `{}` does not exist in the {side}",
                    t.name
                )));
            };
            binary_io &= check_table_side(t, side, &side_table.columns)?;
        }
        if binary_io {
            binary.insert(t.name.clone());
        }
    }
    Ok(binary)
}

fn check_table_side(
    t: &SliceTable,
    side: &str,
    cols: &BTreeMap<String, SideColumn>,
) -> Result<bool, SliceError> {
    let refuse = |what: String| Err(SliceError::Refused(format!("column `{}`.{what}", t.name)));
    let mut binary_io = true;
    for c in t.copied() {
        let Some(col) = cols.get(&c.name) else {
            return refuse(format!("`{}` is missing in the {side}", c.name));
        };
        if col.data_type != c.data_type {
            return refuse(format!(
                "`{}` is `{}` in the {side}, `{}` in the plan",
                c.name, col.data_type, c.data_type
            ));
        }
        if col.generated {
            return refuse(format!("`{}` is generated in the {side}", c.name));
        }
        match (&c.sequence, &col.sequence) {
            (Some(_), None) => {
                return refuse(format!(
                    "`{}` has no sequence (identity or serial) in the {side}, one in the plan",
                    c.name
                ));
            }
            (None, Some(seq)) => {
                return refuse(format!(
                    "`{}` is fed by the sequence {seq} in the {side}, by none in the plan",
                    c.name
                ));
            }
            _ => {}
        }
        binary_io &= col.binary_io;
    }
    for (name, col) in cols {
        if !col.generated && !t.copied().any(|c| &c.name == name) {
            return refuse(format!("`{name}` exists in the {side} but not in the plan"));
        }
    }
    Ok(binary_io)
}

/// Deletes the tenant's rows, children first (checked mode: after setting the `set_after`
/// columns to NULL), in one round trip that first runs the [`Checks`]' count before the copy
/// (replica mode). Returns the rows deleted per table, in plan order, and those counts.
async fn delete(
    dst: &mut PgConnection,
    plan: &SlicePlan,
    scope: Scope<'_>,
    mode: Mode,
    checks: &Checks,
) -> Result<(Vec<u64>, Counts), SliceError> {
    let mut sql = String::new();
    let mut skip = 0;
    if let Some(before) = checks.before_sql() {
        let _ = write!(sql, "{before};");
        skip += 1;
    }
    if mode == Mode::Checked {
        for t in plan.tables.iter().filter(|t| !t.set_after.is_empty()) {
            let sets: Vec<String> =
                t.set_after.iter().map(|c| format!("{} = NULL", ANSI.quote(c))).collect();
            let _ = write!(
                sql,
                "UPDATE {} SET {} WHERE {};",
                scope.table(&t.name),
                sets.join(", "),
                selector(plan, t, scope)
            );
            skip += 1;
        }
    }
    for t in plan.tables.iter().rev() {
        let _ =
            write!(sql, "DELETE FROM {} WHERE {};", scope.table(&t.name), selector(plan, t, scope));
    }
    let names: Vec<&str> = plan.tables.iter().rev().map(|t| t.name.as_str()).collect();
    let context = format!(
        "delete the tenant's rows from {}",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    );
    let mut results = Vec::new();
    let mut counts = Counts::new();
    let mut stream = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(&mut *dst);
    while let Some(item) = stream.try_next().await.map_err(db(&context))? {
        match item {
            Either::Left(done) => results.push(done.rows_affected()),
            Either::Right(row) => {
                let (i, n): (i32, i64) =
                    (row.try_get(0).map_err(db(&context))?, row.try_get(1).map_err(db(&context))?);
                counts.insert(i, n);
            }
        }
    }
    let mut deleted: Vec<u64> = results.into_iter().skip(skip).collect();
    deleted.reverse();
    deleted.resize(plan.tables.len(), 0);
    Ok((deleted, counts))
}

/// Streams the tenant's rows of `t` from the source into the destination. Checked mode
/// inserts the `set_after` columns as NULL.
async fn insert(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    t: &SliceTable,
    scope: Scope<'_>,
    mode: Mode,
    binary: bool,
) -> Result<u64, SliceError> {
    let select: Vec<String> = t
        .copied()
        .map(|c| {
            if mode == Mode::Checked && t.set_after.contains(&c.name) {
                format!("NULL::{}", c.data_type)
            } else {
                ANSI.quote(&c.name)
            }
        })
        .collect();
    let out = format!(
        "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT{}",
        select.join(", "),
        scope.table(&t.name),
        selector(plan, t, scope),
        format_clause(binary)
    );
    let into = format!(
        "COPY {} ({}) FROM STDIN{}",
        scope.table(&t.name),
        ANSI.list(t.copied().map(|c| c.name.as_str())),
        format_clause(binary)
    );
    pipe(src, dst, &out, &into).await.map_err(|(step, e)| {
        SliceError::database(&format!("copy the tenant's rows of `{}` ({step})", t.name), &e)
    })
}

fn format_clause(binary: bool) -> &'static str {
    if binary { " (FORMAT binary)" } else { "" }
}

/// Runs `out` (a `COPY … TO STDOUT`) on `src` and feeds its data, in chunks of about
/// [`CHUNK`] bytes, to `into` (a `COPY … FROM STDIN`) on `dst`; never holds more than a chunk.
/// Returns the rows written, or the failed step and its error.
async fn pipe(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    out: &str,
    into: &str,
) -> Result<u64, (&'static str, sqlx::Error)> {
    let mut sink = dst.copy_in_raw(into).await.map_err(|e| ("destination COPY", e))?;
    let mut stream = match src.copy_out_raw(out).await {
        Ok(s) => s,
        Err(e) => {
            let _ = sink.abort("the source COPY failed").await;
            return Err(("source COPY", e));
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 64 * 1024);
    loop {
        match stream.try_next().await {
            Ok(Some(data)) => {
                buf.extend_from_slice(&data);
                if buf.len() >= CHUNK {
                    if let Err(e) = sink.send(buf.as_slice()).await {
                        // sqlx cannot resume a connection whose `COPY TO` was left unread:
                        // read it to the end so the source can still roll back.
                        while let Ok(Some(_)) = stream.try_next().await {}
                        return Err(("destination COPY", e));
                    }
                    buf.clear();
                }
            }
            Ok(None) => break,
            Err(e) => {
                drop(stream);
                let _ = sink.abort("the source COPY failed").await;
                return Err(("source COPY", e));
            }
        }
    }
    drop(stream);
    if !buf.is_empty() {
        sink.send(buf.as_slice()).await.map_err(|e| ("destination COPY", e))?;
    }
    sink.finish().await.map_err(|e| ("destination COPY", e))
}

/// Checked mode: sets the `set_after` columns of the inserted rows from the source, by key:
/// the source's key and those columns are staged in a temporary table by `COPY`, then one
/// `UPDATE … FROM` per table.
async fn set_after(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    scope: Scope<'_>,
    binary: &BTreeSet<String>,
) -> Result<(), SliceError> {
    for (i, t) in plan.tables.iter().enumerate().filter(|(_, t)| !t.set_after.is_empty()) {
        if t.primary_key.is_empty() {
            return Err(SliceError::Refused(format!(
                "table `{}` has no primary key: its columns {} cannot be set after the insert",
                t.name,
                t.set_after.join(", ")
            )));
        }
        let stage = format!("rewind_after_{i}");
        let cols: Vec<&str> =
            t.primary_key.iter().chain(&t.set_after).map(String::as_str).collect();
        let create = format!(
            "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
            ANSI.list(cols.iter().copied()),
            scope.table(&t.name)
        );
        let context = format!("set the columns {} of `{}`", t.set_after.join(", "), t.name);
        sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut *dst).await.map_err(db(&context))?;
        let fmt = format_clause(binary.contains(&t.name));
        let out = format!(
            "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT{fmt}",
            ANSI.list(cols.iter().copied()),
            scope.table(&t.name),
            selector(plan, t, scope)
        );
        let into = format!("COPY {stage} FROM STDIN{fmt}");
        pipe(src, dst, &out, &into)
            .await
            .map_err(|(step, e)| SliceError::database(&format!("{context} ({step})"), &e))?;
        let sets: Vec<String> =
            t.set_after.iter().map(|c| format!("{0} = s.{0}", ANSI.quote(c))).collect();
        let on: Vec<String> =
            t.primary_key.iter().map(|c| format!("t.{0} = s.{0}", ANSI.quote(c))).collect();
        let update = format!(
            "UPDATE {} AS t SET {} FROM {stage} AS s WHERE {}",
            scope.table(&t.name),
            sets.join(", "),
            on.join(" AND ")
        );
        sqlx::raw_sql(AssertSqlSafe(update)).execute(&mut *dst).await.map_err(db(&context))?;
    }
    Ok(())
}

/// A foreign key on the destination that the copy may have broken.
struct Reference {
    name: String,
    child: String,
    /// The child as SQL (`regclass` text: quoted, qualified when off the search path).
    child_sql: String,
    parent: String,
    parent_sql: String,
    columns: Vec<String>,
    parent_columns: Vec<String>,
    /// `pg_constraint.confdeltype`: `a` NO ACTION, `r` RESTRICT, `c` CASCADE, `n` SET NULL,
    /// `d` SET DEFAULT.
    on_delete: String,
}

/// Foreign keys whose child or parent is a planned table of the current schema; the other side
/// may be anywhere. Written for a short planning time (it runs once per copy): no join over the
/// key columns, their names are read by subqueries.
const REFERENCES: &str = "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
    SELECT k.conname::text, c.relname::text, k.conrelid::regclass::text, \
      p.relname::text, k.confrelid::regclass::text, \
      ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(n, o) \
            JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o), \
      ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS u(n, o) \
            JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o), \
      c.relnamespace = (SELECT oid FROM ns) AND c.relname = ANY($1), k.confdeltype::text \
    FROM pg_constraint k \
    JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid \
    WHERE k.contype = 'f' AND k.conparentid = 0 \
      AND ((c.relnamespace = (SELECT oid FROM ns) AND c.relname = ANY($1)) \
        OR (p.relnamespace = (SELECT oid FROM ns) AND p.relname = ANY($1))) \
    ORDER BY c.relname, k.conname";

/// The foreign keys into and out of planned tables, each with whether its child is planned;
/// a planned child's first via is left out (see [`Checks`]).
async fn read_references(
    dst: &mut PgConnection,
    plan: &SlicePlan,
) -> Result<Vec<(Reference, bool)>, SliceError> {
    let names: Vec<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    type Row = (String, String, String, String, String, Vec<String>, Vec<String>, bool, String);
    let rows = sqlx::query_as::<_, Row>(REFERENCES)
        .bind(&names)
        .fetch_all(&mut *dst)
        .await
        .map_err(db("read the destination's foreign keys"))?;
    let mut refs = Vec::new();
    for row in rows {
        let (
            name,
            child,
            child_sql,
            parent,
            parent_sql,
            columns,
            parent_columns,
            planned,
            on_delete,
        ) = row;
        let r = Reference {
            name,
            child,
            child_sql,
            parent,
            parent_sql,
            columns,
            parent_columns,
            on_delete,
        };
        if !(planned && holds_by_construction(plan, &r)) {
            refs.push((r, planned));
        }
    }
    Ok(refs)
}

/// Whether `r` is its planned child's first via (see [`Checks`]).
fn holds_by_construction(plan: &SlicePlan, r: &Reference) -> bool {
    let first = plan.table(&r.child).and_then(|t| t.via.first());
    matches!(first, Some(Via::Parent { constraint, parent, columns, .. })
        if *constraint == r.name && *parent == r.parent && *columns == r.columns)
}

/// Row counts by check ([`Checks`]), as the count queries return them.
type Counts = BTreeMap<i32, i64>;

/// What replica mode checks, as it enforces no foreign key. One query before the deletes (in
/// their round trip) and one before commit, each a `UNION ALL` of counts:
///
/// - *restored rows* (after the copy): for each foreign key of a planned table, the tenant's
///   rows with the key set and no parent row (a parent missing, also in a table the plan
///   leaves out); any is refused. A table's first [`Via`] holds by construction and is not
///   checked: a row it selects references a parent row of the slice, which the same source
///   snapshot copied; a row another via selects has the first via's columns unset.
/// - *rows that reference the tenant's* (before and after): for each foreign key into a
///   planned table, the rows of its child that reference a row of the parent's slice — all the
///   child's rows when the plan leaves it out, else those the child's selector does not select
///   (another tenant's row whose nullable key points at this tenant's row). Those rows are not
///   written by the copy, and rows outside the slice are not either, so the count drops exactly
///   when a row the copy deleted and did not restore was referenced: refused. A reference that
///   was already broken (a `NOT VALID` key) is not counted, and only rows whose key points into
///   the slice are read (`(key) IN (SELECT … WHERE <parent's selector>)`, as the deletes read
///   them), not whole tables. The first via of a planned child is left out here too: every row
///   whose key points into the slice by it is selected.
#[derive(Default)]
struct Checks {
    items: Vec<Check>,
}

struct Check {
    /// Counted before the deletes too, and refused when the count drops; else refused when not
    /// zero after the inserts.
    before_and_after: bool,
    /// `SELECT <index>::int4, count(*) …`
    sql: String,
    /// What the rows counted are, for the refusal.
    what: String,
}

/// Whether `table`'s slice is decided by the NOT NULL foreign key `constraint` alone (its only
/// via): then every row that references the parent's slice by it is in the table's slice.
fn decides_alone(table: &SliceTable, constraint: &str) -> bool {
    matches!(
        table.via.as_slice(),
        [Via::Parent { constraint: c, nullable: false, .. }] if c == constraint
    )
}

impl Checks {
    fn new(plan: &SlicePlan, scope: Scope<'_>, refs: &[(Reference, bool)]) -> Self {
        let mut items = Vec::new();
        for (r, planned_child) in refs {
            let key = describe_key(r);
            let child = plan.table(&r.child).filter(|_| *planned_child);
            if let Some(t) = child {
                let i = items.len();
                items.push(Check {
                    before_and_after: false,
                    sql: dangling_count(i, r, &selector(plan, t, scope)),
                    what: format!(
                        "restored rows of `{}` reference rows of `{}` that the destination does \
                         not have (constraint `{}`, {key})",
                        r.child, r.parent, r.name
                    ),
                });
            }
            // A child whose one way into the slice is this NOT NULL key selects every row that
            // references the tenant's parent rows by it: none can be outside the slice.
            let decided_by_it = child.is_some_and(|t| decides_alone(t, &r.name));
            if let Some(parent) = plan.table(&r.parent).filter(|_| !decided_by_it) {
                let i = items.len();
                let not_selected = child
                    .map(|t| format!("NOT COALESCE(({}), false) AND ", selector(plan, t, scope)))
                    .unwrap_or_default();
                let sql = format!(
                    "SELECT {i}::int4, count(*) FROM {} AS rewind_c WHERE {not_selected}{} \
                     IN (SELECT {} FROM {} WHERE {})",
                    r.child_sql,
                    tuple(r.columns.iter().map(|c| format!("rewind_c.{}", ANSI.quote(c)))),
                    ANSI.list(r.parent_columns.iter().map(String::as_str)),
                    scope.table(&parent.name),
                    selector(plan, parent, scope)
                );
                let whose = if child.is_some() {
                    format!("rows of `{}` outside the tenant's slice", r.child)
                } else {
                    format!("rows of `{}`, which the plan leaves out,", r.child)
                };
                items.push(Check {
                    before_and_after: true,
                    sql,
                    what: format!(
                        "{whose} reference rows of `{}` that the copy deleted and did not \
                         restore (constraint `{}`, {key})",
                        r.parent, r.name
                    ),
                });
            }
        }
        Self { items }
    }

    /// The counts taken before the deletes, if any.
    fn before_sql(&self) -> Option<String> {
        let selects: Vec<&str> =
            self.items.iter().filter(|c| c.before_and_after).map(|c| c.sql.as_str()).collect();
        (!selects.is_empty()).then(|| selects.join(" UNION ALL "))
    }

    /// Counts again after the inserts and refuses what the copy broke (`before`: the counts of
    /// [`Checks::before_sql`]).
    async fn after(&self, dst: &mut PgConnection, before: &Counts) -> Result<(), SliceError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let sql = self.items.iter().map(|c| c.sql.as_str()).collect::<Vec<_>>().join(" UNION ALL ");
        let context = "check the restored rows' references";
        let counts: Counts = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut *dst)
            .await
            .map_err(db(context))?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db(context))?;
        let broken: Vec<String> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let i = i32::try_from(i).ok()?;
                let after = counts.get(&i).copied().unwrap_or(0);
                let n = if c.before_and_after {
                    before.get(&i).copied().unwrap_or(0) - after
                } else {
                    after
                };
                (n > 0).then(|| format!("{}: {n} rows", c.what))
            })
            .collect();
        if broken.is_empty() {
            return Ok(());
        }
        Err(SliceError::Refused(broken.join("; ")))
    }
}

/// `a` or `(a, b)`.
fn tuple(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.len() == 1 { items.join("") } else { format!("({})", items.join(", ")) }
}

/// `SELECT <i>, count(*)` of rows of the child that `which` selects, with the key set and no
/// parent row.
fn dangling_count(i: usize, r: &Reference, which: &str) -> String {
    let set: Vec<String> =
        r.columns.iter().map(|c| format!("rewind_c.{} IS NOT NULL", ANSI.quote(c))).collect();
    let join: Vec<String> = r
        .columns
        .iter()
        .zip(&r.parent_columns)
        .map(|(c, p)| format!("rewind_p.{} = rewind_c.{}", ANSI.quote(p), ANSI.quote(c)))
        .collect();
    format!(
        "SELECT {i}::int4, count(*) FROM {} AS rewind_c WHERE ({which}) AND {} \
         AND NOT EXISTS (SELECT 1 FROM {} AS rewind_p WHERE {})",
        r.child_sql,
        set.join(" AND "),
        r.parent_sql,
        join.join(" AND ")
    )
}

/// `` `child` (a, b) → `parent` (x, y) ``
fn describe_key(r: &Reference) -> String {
    format!(
        "`{}` ({}) → `{}` ({})",
        r.child,
        r.columns.join(", "),
        r.parent,
        r.parent_columns.join(", ")
    )
}

/// Advances the sequence of every copied identity or serial column past the largest value in
/// its table (`setval` only when the next value would not be greater), in one query. The
/// sequence is the destination's own, as its catalog names it for the destination's table
/// (`dst`): the plan's names come from the catalog the plan was made from, often the source's.
async fn advance_sequences(
    dst: &mut PgConnection,
    plan: &SlicePlan,
    dst_tables: &SideTables,
) -> Result<(), SliceError> {
    let selects: Vec<String> = plan
        .tables
        .iter()
        .flat_map(|t| {
            let side = dst_tables.get(&t.name);
            t.copied()
                .filter_map(move |c| Some((t, c, side?.columns.get(&c.name)?.sequence.as_deref()?)))
        })
        .map(|(t, c, seq)| {
            format!(
                "SELECT setval(s.tableoid::regclass, m.v, true) FROM {seq} AS s, \
                 (SELECT max({})::bigint AS v FROM {}) AS m \
                 WHERE m.v > s.last_value OR (m.v = s.last_value AND NOT s.is_called)",
                ANSI.quote(&c.name),
                ANSI.quote(&t.name)
            )
        })
        .collect();
    if selects.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(selects.join(" UNION ALL ")))
        .execute(&mut *dst)
        .await
        .map_err(db("advance the sequences of the copied identity and serial columns"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Digest

/// The digest of the tenant's slice on `conn`: per planned table, its rows (every column,
/// generated ones included, as PostgreSQL's text) hashed order-independently, read in one
/// `REPEATABLE READ` snapshot.
pub async fn digest(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<SliceDigest, SliceError> {
    sqlx::raw_sql(AssertSqlSafe(begin_read()))
        .execute(&mut *conn)
        .await
        .map_err(db("begin the digest's transaction"))?;
    let result = digest_in_transaction(conn, plan, tenant).await;
    let end = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
    let digest = result?;
    end.map_err(db("end the digest's transaction"))?;
    Ok(digest)
}

async fn digest_in_transaction(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<SliceDigest, SliceError> {
    let tenant = tenant_sql(conn, plan, tenant, false).await?;
    let scope = Scope { dialect: ANSI, qualifier: "", tenant: &tenant.sql };
    digest_rows(conn, plan, scope, None).await
}

/// Digests the slice `scope` selects; with `rewrite`, each cell as the restored row has it.
async fn digest_rows(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    scope: Scope<'_>,
    rewrite: Option<&Rewrite<'_>>,
) -> Result<SliceDigest, SliceError> {
    let mut out = SliceDigest::default();
    for (ti, t) in plan.tables.iter().enumerate() {
        let cols: Vec<String> =
            t.columns.iter().map(|c| format!("{}::text", ANSI.quote(&c.name))).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            if cols.is_empty() { "1".to_owned() } else { cols.join(", ") },
            scope.table(&t.name),
            selector(plan, t, scope)
        );
        let context = format!("digest the tenant's rows of `{}`", t.name);
        let mut hasher = RowHasher::default();
        let mut rows = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(&mut *conn);
        while let Some(item) = rows.try_next().await.map_err(db(&context))? {
            let Either::Right(row) = item else { continue };
            let cells: Vec<Option<&str>> = (0..t.columns.len())
                .map(|i| row.try_get::<Option<&str>, _>(i))
                .collect::<Result<_, _>>()
                .map_err(db(&context))?;
            match rewrite {
                None => hasher.add_row(cells.into_iter().map(|c| c.map(str::as_bytes))),
                Some(rw) => {
                    let cells: Vec<Option<std::borrow::Cow<'_, str>>> = cells
                        .into_iter()
                        .zip(&t.columns)
                        .map(|(cell, col)| {
                            cell.map(|v| match rw.cell(ti, &col.name, v) {
                                Some(n) => std::borrow::Cow::Owned(n),
                                None => std::borrow::Cow::Borrowed(v),
                            })
                        })
                        .collect();
                    hasher.add_row(cells.iter().map(|c| c.as_deref().map(str::as_bytes)));
                }
            }
        }
        out.tables.push(hasher.finish(&t.name));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Restore as a new tenant

/// The new tenant id as the source server typed it (see [`tenant_sql`]); refused when it is
/// the old tenant (the copy would rewrite the tenant's keys in place).
async fn new_tenant_sql(
    src: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    old: &Tenant,
    new: &str,
) -> Result<String, SliceError> {
    let t = tenant_sql(src, plan, new, false).await?;
    if t.sql == old.sql {
        return Err(SliceError::Refused(format!(
            "`as` {new:?} is the tenant {tenant:?} itself: a restore as a new tenant needs \
             another id; nothing was written"
        )));
    }
    Ok(t.sql)
}

/// What the inserts of a restore as a new tenant need.
struct Remapping<'a> {
    new: NewTenant<'a>,
    /// The old and new tenant as SQL ([`Tenant::sql`]).
    old_sql: &'a str,
    new_sql: &'a str,
}

/// The temporary table of owner `i`'s map on the destination: `(old text, new text)`.
fn map_table(i: usize) -> String {
    format!("rewind_map_{i}")
}

/// The temporary table a planned table's source rows are staged in on the destination.
fn stage_table(i: usize) -> String {
    format!("rewind_in_{i}")
}

/// The tenant's keys of `owner` on the source, as text.
async fn owner_keys(
    src: &mut PgConnection,
    plan: &SlicePlan,
    owner: &remap::Owner,
    scope: Scope<'_>,
) -> Result<Vec<String>, SliceError> {
    let t = plan.table(&owner.table).ok_or_else(|| {
        SliceError::Refused(format!("the remap names `{}`, which is not planned", owner.table))
    })?;
    let sql = format!(
        "SELECT {}::text FROM {} WHERE {}",
        ANSI.quote(&owner.column),
        scope.table(&t.name),
        selector(plan, t, scope)
    );
    sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
        .persistent(false)
        .fetch_all(&mut *src)
        .await
        .map_err(db(format!("read the tenant's keys `{}`.`{}`", owner.table, owner.column)))
}

/// Refuses a text key remapped as a uuid one ([`remap::is_text`]) whose slice holds a value
/// that is not a uuid, naming table, column and value: read on the source, before anything
/// is written.
async fn check_text_keys(
    src: &mut PgConnection,
    plan: &SlicePlan,
    new: NewTenant<'_>,
    scope: Scope<'_>,
) -> Result<(), SliceError> {
    for owner in &new.remap.owners {
        if owner.kind == KeyKind::Uuid && remap::is_text(Engine::Postgres, &owner.data_type) {
            for o in owner_keys(src, plan, owner, scope).await? {
                remap::text_uuid(&owner.table, &owner.column, &o)?;
            }
        }
    }
    Ok(())
}

/// Creates [`remap::KEY_MAP`] on the destination if it is missing.
const CREATE_KEY_MAP: &str = "CREATE TABLE IF NOT EXISTS rewind_key_map (\
    new_tenant text NOT NULL, tbl text NOT NULL, old_key text NOT NULL, new_key text NOT NULL, \
    PRIMARY KEY (new_tenant, tbl, old_key))";

/// Creates [`remap::KEY_MAP`] in the copy's transaction if the destination lacks it. Two
/// copies as new tenants that both find it missing would both create it, and the second
/// `CREATE TABLE IF NOT EXISTS` fails on the catalog's unique index (23505) instead of seeing
/// the first's table: while the table is missing, the creation is serialized by a
/// transaction-scoped advisory lock on the schema's key map, so the second waits for the first
/// to commit (or roll back) and then finds the table (or creates it). Once it exists no lock is
/// taken.
async fn ensure_key_map(dst: &mut PgConnection) -> Result<(), SliceError> {
    let context = "create the key map rewind_key_map";
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('rewind_key_map') IS NOT NULL")
        .fetch_one(&mut *dst)
        .await
        .map_err(db(context))?;
    if exists {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '.rewind_key_map', 0))",
    )
    .execute(&mut *dst)
    .await
    .map_err(db(context))?;
    sqlx::raw_sql(CREATE_KEY_MAP).execute(&mut *dst).await.map_err(db(context))?;
    Ok(())
}

/// Records (in [`remap::KEY_MAP`], in the copy's transaction) that a copy wrote `new_tenant`,
/// or refuses it when the destination already had `deleted` rows of it that no
/// earlier copy as it wrote ([`remap::refuse_existing`]).
async fn claim_new_tenant(
    dst: &mut PgConnection,
    new_tenant: &str,
    deleted: u64,
) -> Result<(), SliceError> {
    let context = "record the new tenant in rewind_key_map";
    ensure_key_map(dst).await?;
    let claimed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rewind_key_map WHERE new_tenant = $1 AND tbl = $2)",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .fetch_one(&mut *dst)
    .await
    .map_err(db(context))?;
    if deleted > 0 && !claimed {
        return Err(remap::refuse_existing(new_tenant, deleted));
    }
    sqlx::query(
        "INSERT INTO rewind_key_map (new_tenant, tbl, old_key, new_key) VALUES ($1, $2, '', '') \
         ON CONFLICT (new_tenant, tbl, old_key) DO NOTHING",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .execute(&mut *dst)
    .await
    .map_err(db(context))?;
    Ok(())
}

/// Integer keys of `tbl` for `new_tenant` that the map lacks get the next values of the
/// sequence `$3`.
const ALLOCATE_KEYS: &str = "INSERT INTO rewind_key_map (new_tenant, tbl, old_key, new_key) \
    SELECT $1, $2, u.o, nextval($3::regclass)::text FROM unnest($4::text[]) AS u(o) \
    WHERE NOT EXISTS (SELECT 1 FROM rewind_key_map m \
      WHERE m.new_tenant = $1 AND m.tbl = $2 AND m.old_key = u.o)";

/// Builds every owner's old→new map on the destination, as a temporary table
/// ([`map_table`]): uuid keys derived ([`remap::new_uuid`]); integer keys looked up in, or
/// drawn into, [`remap::KEY_MAP`].
async fn stage_maps(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    new: NewTenant<'_>,
    src_scope: Scope<'_>,
    dst_cols: &SideTables,
) -> Result<(), SliceError> {
    let mut key_map_ready = false;
    for (i, owner) in new.remap.owners.iter().enumerate() {
        let context = format!("map the keys `{}`.`{}` to new ones", owner.table, owner.column);
        let olds = owner_keys(src, plan, owner, src_scope).await?;
        let news: Vec<String> = match owner.kind {
            KeyKind::Uuid => olds
                .iter()
                .map(|o| remap::new_key_uuid(Engine::Postgres, new.id, owner, o))
                .collect::<Result<_, _>>()?,
            KeyKind::Integer => {
                let Some(seq) = dst_cols
                    .get(&owner.table)
                    .and_then(|t| t.columns.get(&owner.column))
                    .and_then(|c| c.sequence.clone())
                else {
                    return Err(SliceError::Refused(format!(
                        "restore as a new tenant: the integer key `{}`.`{}` has no sequence \
                         (identity or serial) on the destination to draw new values from",
                        owner.table, owner.column
                    )));
                };
                if !key_map_ready {
                    ensure_key_map(dst).await?;
                    key_map_ready = true;
                }
                sqlx::query(ALLOCATE_KEYS)
                    .bind(new.id)
                    .bind(&owner.table)
                    .bind(&seq)
                    .bind(&olds)
                    .execute(&mut *dst)
                    .await
                    .map_err(db(&context))?;
                let pairs: Vec<(String, String)> = sqlx::query_as(
                    "SELECT old_key, new_key FROM rewind_key_map \
                     WHERE new_tenant = $1 AND tbl = $2 AND old_key = ANY($3)",
                )
                .bind(new.id)
                .bind(&owner.table)
                .bind(&olds)
                .fetch_all(&mut *dst)
                .await
                .map_err(db(&context))?;
                let map: HashMap<String, String> = pairs.into_iter().collect();
                olds.iter().map(|o| map.get(o).cloned().unwrap_or_default()).collect()
            }
        };
        let table = map_table(i);
        let create = format!(
            "CREATE TEMP TABLE {table} (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP"
        );
        sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut *dst).await.map_err(db(&context))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (old, new) SELECT * FROM unnest($1::text[], $2::text[])"
        )))
        .persistent(false)
        .bind(&olds)
        .bind(&news)
        .execute(&mut *dst)
        .await
        .map_err(db(&context))?;
    }
    Ok(())
}

/// The value a restored row of the plan's table `i` has in column `c`, read from the staged
/// source row `s`.
fn remapped_expr(r: &Remapping<'_>, i: usize, c: &Column) -> String {
    let col = format!("s.{}", ANSI.quote(&c.name));
    match r.new.remap.source(i, &c.name) {
        None => col,
        Some(Source::Tenant) => format!(
            "CASE WHEN {col} = {} THEN CAST({} AS {}) ELSE {col} END",
            r.old_sql, r.new_sql, c.data_type
        ),
        Some(Source::Key(k)) => format!(
            "COALESCE((SELECT CAST(m.new AS {}) FROM {} AS m WHERE m.old = {col}::text), {col})",
            c.data_type,
            map_table(k)
        ),
    }
}

/// Stages the tenant's rows of the plan's table `i` from the source in a temporary table on
/// the destination ([`stage_table`]), then inserts them with their keys remapped. Checked
/// mode inserts the `set_after` columns as NULL ([`set_after_remapped`] sets them).
#[allow(clippy::too_many_arguments)]
async fn insert_remapped(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    i: usize,
    src_scope: Scope<'_>,
    mode: Mode,
    binary: bool,
    r: &Remapping<'_>,
) -> Result<u64, SliceError> {
    let Some(t) = plan.tables.get(i) else { return Ok(0) };
    let context = format!("copy the tenant's rows of `{}` as the new tenant", t.name);
    let stage = stage_table(i);
    let cols = ANSI.list(t.copied().map(|c| c.name.as_str()));
    let create = format!(
        "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
        src_scope.table(&t.name)
    );
    sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut *dst).await.map_err(db(&context))?;
    let out = format!(
        "COPY (SELECT {cols} FROM {} WHERE {}) TO STDOUT{}",
        src_scope.table(&t.name),
        selector(plan, t, src_scope),
        format_clause(binary)
    );
    let into = format!("COPY {stage} ({cols}) FROM STDIN{}", format_clause(binary));
    pipe(src, dst, &out, &into)
        .await
        .map_err(|(step, e)| SliceError::database(&format!("{context} ({step})"), &e))?;
    let exprs: Vec<String> = t
        .copied()
        .map(|c| {
            if mode == Mode::Checked && t.set_after.contains(&c.name) {
                format!("NULL::{}", c.data_type)
            } else {
                remapped_expr(r, i, c)
            }
        })
        .collect();
    // The new keys are written as drawn, into `GENERATED ALWAYS` identity columns too.
    let insert = format!(
        "INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {} FROM {stage} AS s",
        src_scope.table(&t.name),
        exprs.join(", ")
    );
    let done =
        sqlx::raw_sql(AssertSqlSafe(insert)).execute(&mut *dst).await.map_err(db(&context))?;
    Ok(done.rows_affected())
}

/// Checked mode: sets the `set_after` columns of the restored rows from their staged source
/// rows, remapped, matched by the remapped primary key.
async fn set_after_remapped(
    dst: &mut PgConnection,
    plan: &SlicePlan,
    r: &Remapping<'_>,
) -> Result<(), SliceError> {
    for (i, t) in plan.tables.iter().enumerate().filter(|(_, t)| !t.set_after.is_empty()) {
        if t.primary_key.is_empty() {
            return Err(SliceError::Refused(format!(
                "table `{}` has no primary key: its columns {} cannot be set after the insert",
                t.name,
                t.set_after.join(", ")
            )));
        }
        let column = |name: &str| t.columns.iter().find(|c| c.name == name);
        let sets: Vec<String> = t
            .set_after
            .iter()
            .filter_map(|c| column(c))
            .map(|c| format!("{} = {}", ANSI.quote(&c.name), remapped_expr(r, i, c)))
            .collect();
        let on: Vec<String> = t
            .primary_key
            .iter()
            .filter_map(|c| column(c))
            .map(|c| format!("d.{} = {}", ANSI.quote(&c.name), remapped_expr(r, i, c)))
            .collect();
        let update = format!(
            "UPDATE {} AS d SET {} FROM {} AS s WHERE {}",
            ANSI.quote(&t.name),
            sets.join(", "),
            stage_table(i),
            on.join(" AND ")
        );
        let context = format!("set the columns {} of `{}`", t.set_after.join(", "), t.name);
        sqlx::raw_sql(AssertSqlSafe(update)).execute(&mut *dst).await.map_err(db(&context))?;
    }
    Ok(())
}

/// The integer keys' maps of `new_tenant` kept on `conn` ([`remap::KEY_MAP`]), by table:
/// old → new. Empty when the map table does not exist.
pub async fn key_maps(
    conn: &mut PgConnection,
    new_tenant: &str,
) -> Result<BTreeMap<String, HashMap<String, String>>, SliceError> {
    let context = "read the key map rewind_key_map";
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('rewind_key_map') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(db(context))?;
    let mut out: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    if !exists {
        return Ok(out);
    }
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tbl, old_key, new_key FROM rewind_key_map WHERE new_tenant = $1")
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
/// `new`: every changed cell replaced as [`copy_as`] writes it (`maps`: the integer keys'
/// maps, [`key_maps`] of the destination). Equal to [`digest`] of the new tenant on the
/// destination when the copy restored it.
pub async fn digest_as(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
    maps: &BTreeMap<String, HashMap<String, String>>,
) -> Result<SliceDigest, SliceError> {
    sqlx::raw_sql(AssertSqlSafe(begin_read()))
        .execute(&mut *conn)
        .await
        .map_err(db("begin the digest's transaction"))?;
    let result = digest_as_in_transaction(conn, plan, tenant, new, maps).await;
    let end = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
    let digest = result?;
    end.map_err(db("end the digest's transaction"))?;
    Ok(digest)
}

async fn digest_as_in_transaction(
    conn: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
    maps: &BTreeMap<String, HashMap<String, String>>,
) -> Result<SliceDigest, SliceError> {
    let old = tenant_sql(conn, plan, tenant, false).await?;
    let new_sql = new_tenant_sql(conn, plan, tenant, &old, new.id).await?;
    let (old_text, new_text): (String, String) =
        sqlx::query_as(AssertSqlSafe(format!("SELECT ({})::text, ({new_sql})::text", old.sql)))
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("read the tenant ids as text"))?;
    let scope = Scope { dialect: ANSI, qualifier: "", tenant: &old.sql };
    let mut owner_maps = HashMap::new();
    for (i, owner) in new.remap.owners.iter().enumerate() {
        let olds = owner_keys(conn, plan, owner, scope).await?;
        let map: HashMap<String, String> = match owner.kind {
            KeyKind::Uuid => olds
                .into_iter()
                .map(|o| {
                    let n = remap::new_key_uuid(Engine::Postgres, new.id, owner, &o)?;
                    Ok((o, n))
                })
                .collect::<Result<_, SliceError>>()?,
            KeyKind::Integer => maps.get(&owner.table).cloned().unwrap_or_default(),
        };
        owner_maps.insert(i, map);
    }
    let rewrite =
        Rewrite { remap: new.remap, old_tenant: old_text, new_tenant: new_text, maps: owner_maps };
    digest_rows(conn, plan, scope, Some(&rewrite)).await
}
