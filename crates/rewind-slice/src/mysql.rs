//! MariaDB/MySQL: the catalog ([`schema`]), a tenant's copy ([`copy`]) and digest ([`digest`]).
//!
//! **Values.** Every column is read and written by a [`Kind`] derived from its `COLUMN_TYPE`:
//! integers as `i64`/`u64`, `BIT(n)` as its unsigned value, `FLOAT`/`DOUBLE` as `f32`/`f64`
//! (their binary form: the server's text form of a double is rounded), binary strings and
//! blobs as bytes, and everything else (decimal, temporal types, json, text, enum, set, uuid)
//! as the server's exact text under `time_zone = '+00:00'`, which the server converts back to
//! the column's type on insert.
//!
//! **Sessions.** A copy sets, and restores when it ends (also after a failure):
//! `time_zone = '+00:00'` on both connections (so `TIMESTAMP` values pass unchanged); on the
//! destination `foreign_key_checks = 0` (rewind checks every foreign key of the copied rows
//! itself before it commits) and `@rewind_restore = 1`. MariaDB cannot turn triggers off for a
//! session: a copy is refused while a planned table of the destination has a trigger whose body
//! does not mention `@rewind_restore` (guarded by `IF @rewind_restore IS NULL THEN … END IF`,
//! it skips the restore).
//!
//! **Tenant id.** Bound as a `?` parameter wherever a statement compares it, typed by the key
//! that holds it (integers as integers, a `uuid` checked as one, a `BINARY(16)` key from a uuid's
//! 16 bytes, other binary keys from the id's bytes, the rest as text): a parameter takes the
//! collation of the column it meets, so a key of any collation compares as its column does.
//!
//! **Refusals.** Before anything is deleted: a source without the tenant's root row (the copy
//! would only delete), and a trigger as above. Before the commit: a restored row whose foreign
//! key finds no parent; a row outside the slice, in a planned table (another tenant's row
//! pointing at this tenant's) or in a table the plan leaves out, whose parent the copy deleted
//! and did not insert again.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use sqlx::mysql::{MySqlArguments, MySqlConnection, MySqlRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, Row};

use crate::error::{SliceError, db};
use crate::plan::{SlicePlan, SliceTable, Via};
use crate::remap::{self, KeyKind, NewTenant, Source};
use crate::schema::{Column, Engine, ForeignKey, Schema, Table};
use crate::sql::{self, Dialect, Scope};
use crate::{CopyReport, RowHasher, SliceDigest, TableCopy};

const D: Dialect = Dialect::Backtick;
/// Most rows in one `INSERT`.
const MAX_INSERT_ROWS: usize = 500;
/// About the most bytes of values in one `INSERT`.
const MAX_INSERT_BYTES: usize = 1 << 20;
/// The protocol's limit of placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;
/// Most keys in one `DELETE`.
const DELETE_BATCH: usize = 2_000;

/// A dynamic statement: every name in it went through [`Dialect::quote`], every value is bound.
fn stmt<'q>(sql: String) -> Query<'q, MySql, MySqlArguments> {
    sqlx::query(AssertSqlSafe(sql))
}

/// Runs a statement that takes no parameters and returns no rows, by the text protocol.
async fn run(conn: &mut MySqlConnection, sql: &'static str) -> Result<(), SliceError> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map_err(db(format!("`{sql}`")))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Catalog

/// Reads the base tables of the connection's database (`DATABASE()`) from
/// `information_schema`: columns with their `COLUMN_TYPE`, nullability and whether they are
/// generated, primary keys, foreign keys whose parent is in the same database, and triggers.
pub async fn schema(conn: &mut MySqlConnection) -> Result<Schema, SliceError> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the tables from information_schema.TABLES"))?;
    for row in &rows {
        let name = text(row, 0)?;
        tables.insert(name.clone(), Table::named(name));
    }
    read_columns(conn, &mut tables).await?;
    read_primary_keys(conn, &mut tables).await?;
    read_foreign_keys(conn, &mut tables).await?;
    read_triggers(conn, &mut tables).await?;
    Ok(Schema { engine: Engine::Mysql, tables })
}

async fn read_columns(
    conn: &mut MySqlConnection,
    tables: &mut BTreeMap<String, Table>,
) -> Result<(), SliceError> {
    let rows = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the columns from information_schema.COLUMNS"))?;
    for row in &rows {
        let Some(table) = tables.get_mut(&text(row, 0)?) else { continue };
        let extra = text(row, 4)?.to_ascii_uppercase();
        table.columns.push(Column {
            name: text(row, 1)?,
            data_type: text(row, 2)?,
            nullable: text(row, 3)?.eq_ignore_ascii_case("YES"),
            // MariaDB: `VIRTUAL GENERATED`, `STORED GENERATED` (`PERSISTENT GENERATED` before
            // 10.2); MySQL also writes `DEFAULT_GENERATED` for expression defaults, which are
            // ordinary columns.
            generated: extra.contains("VIRTUAL")
                || extra.contains("STORED GENERATED")
                || extra.contains("PERSISTENT"),
            sequence: None,
        });
    }
    Ok(())
}

async fn read_primary_keys(
    conn: &mut MySqlConnection,
    tables: &mut BTreeMap<String, Table>,
) -> Result<(), SliceError> {
    let rows = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA = DATABASE() AND CONSTRAINT_NAME = 'PRIMARY' \
         ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the primary keys from information_schema.KEY_COLUMN_USAGE"))?;
    for row in &rows {
        if let Some(table) = tables.get_mut(&text(row, 0)?) {
            table.primary_key.push(text(row, 1)?);
        }
    }
    Ok(())
}

async fn read_foreign_keys(
    conn: &mut MySqlConnection,
    tables: &mut BTreeMap<String, Table>,
) -> Result<(), SliceError> {
    let rows = sqlx::query(
        "SELECT k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, k.REFERENCED_TABLE_NAME, \
                k.REFERENCED_COLUMN_NAME \
         FROM information_schema.KEY_COLUMN_USAGE k \
         JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
           ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA \
          AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME AND r.TABLE_NAME = k.TABLE_NAME \
         WHERE k.TABLE_SCHEMA = DATABASE() AND k.REFERENCED_TABLE_SCHEMA = DATABASE() \
         ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the foreign keys from information_schema.KEY_COLUMN_USAGE"))?;
    for row in &rows {
        let (child, name, parent) = (text(row, 0)?, text(row, 1)?, text(row, 3)?);
        let (column, parent_column) = (text(row, 2)?, text(row, 4)?);
        if !tables.contains_key(&parent) {
            continue;
        }
        let Some(table) = tables.get_mut(&child) else { continue };
        match table.foreign_keys.iter_mut().find(|fk| fk.name == name) {
            Some(fk) => {
                fk.columns.push(column);
                fk.parent_columns.push(parent_column);
            }
            None => table.foreign_keys.push(ForeignKey {
                name,
                columns: vec![column],
                parent,
                parent_columns: vec![parent_column],
                deferrable: false,
                declared: false,
            }),
        }
    }
    Ok(())
}

async fn read_triggers(
    conn: &mut MySqlConnection,
    tables: &mut BTreeMap<String, Table>,
) -> Result<(), SliceError> {
    let rows = sqlx::query(
        "SELECT EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS \
         WHERE EVENT_OBJECT_SCHEMA = DATABASE() ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the triggers from information_schema.TRIGGERS"))?;
    for row in &rows {
        if let Some(table) = tables.get_mut(&text(row, 0)?) {
            let name = text(row, 1)?;
            if !table.triggers.contains(&name) {
                table.triggers.push(name);
            }
        }
    }
    Ok(())
}

/// Cell `i` as text: `information_schema` answers some columns as binary strings on MariaDB,
/// so bytes are accepted too (as UTF-8).
fn text(row: &MySqlRow, i: usize) -> Result<String, SliceError> {
    if let Ok(s) = row.try_get::<String, _>(i) {
        return Ok(s);
    }
    let bytes = row
        .try_get_unchecked::<Vec<u8>, _>(i)
        .map_err(db(format!("read catalog column {i} as text")))?;
    String::from_utf8(bytes).map_err(|e| SliceError::Database {
        message: format!("catalog column {i} is not UTF-8: {e}"),
        transient: false,
    })
}

// ---------------------------------------------------------------------------------------------
// Values

/// How a column's values are read, bound and digested, from its `COLUMN_TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    UInt,
    /// `BIT(n)`: read as `CAST(… AS UNSIGNED)`, written as that integer.
    Bit,
    Float,
    Double,
    /// Binary strings, blobs and anything without a text form (spatial types).
    Bytes,
    /// Read as `CAST(… AS CHAR)`: exact for decimal, temporal, json, text, enum, set, uuid.
    Text,
}

impl Kind {
    fn of(data_type: &str) -> Self {
        let t = data_type.trim().to_ascii_lowercase();
        let base = t.split(['(', ' ']).next().unwrap_or_default();
        match base {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "bool"
            | "boolean" => {
                if t.contains("unsigned") {
                    Self::UInt
                } else {
                    Self::Int
                }
            }
            "bit" => Self::Bit,
            "float" => Self::Float,
            "double" | "real" => Self::Double,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
            | "geometry" | "point" | "linestring" | "polygon" | "multipoint"
            | "multilinestring" | "multipolygon" | "geometrycollection" => Self::Bytes,
            _ => Self::Text,
        }
    }

    /// The select-list expression that reads `column` in this kind's form.
    fn select(self, column: &str) -> String {
        let c = D.quote(column);
        match self {
            Self::Bit => format!("CAST({c} AS UNSIGNED)"),
            Self::Text => format!("CAST({c} AS CHAR)"),
            _ => c,
        }
    }

    fn decode(self, row: &MySqlRow, i: usize) -> Result<Value, sqlx::Error> {
        Ok(match self {
            Self::Int => row.try_get::<Option<i64>, _>(i)?.map_or(Value::Null, Value::Int),
            Self::UInt | Self::Bit => {
                row.try_get::<Option<u64>, _>(i)?.map_or(Value::Null, Value::UInt)
            }
            Self::Float => row.try_get::<Option<f32>, _>(i)?.map_or(Value::Null, Value::Float),
            Self::Double => row.try_get::<Option<f64>, _>(i)?.map_or(Value::Null, Value::Double),
            Self::Bytes => {
                row.try_get_unchecked::<Option<Vec<u8>>, _>(i)?.map_or(Value::Null, Value::Bytes)
            }
            Self::Text => {
                row.try_get_unchecked::<Option<String>, _>(i)?.map_or(Value::Null, Value::Text)
            }
        })
    }
}

/// One cell, as read from the source and bound on the destination.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Bytes(Vec<u8>),
    Text(String),
}

impl Value {
    fn bind<'q>(&self, q: Query<'q, MySql, MySqlArguments>) -> Query<'q, MySql, MySqlArguments> {
        match self {
            Self::Null => q.bind(None::<String>),
            Self::Int(v) => q.bind(*v),
            Self::UInt(v) => q.bind(*v),
            Self::Float(v) => q.bind(*v),
            Self::Double(v) => q.bind(*v),
            Self::Bytes(v) => q.bind(v.as_slice()),
            Self::Text(v) => q.bind(v.as_str()),
        }
    }

    /// About how many bytes the value takes in a statement.
    fn size(&self) -> usize {
        match self {
            Self::Bytes(v) => v.len() + 9,
            Self::Text(v) => v.len() + 9,
            _ => 9,
        }
    }

    /// The canonical, lossless rendering a digest hashes: integers in decimal, floats as the
    /// shortest text that reads back to the same bits, text and bytes as they are.
    fn canonical(&self) -> Option<Vec<u8>> {
        match self {
            Self::Null => None,
            Self::Int(v) => Some(v.to_string().into_bytes()),
            Self::UInt(v) => Some(v.to_string().into_bytes()),
            Self::Float(v) => Some(format!("{v:?}").into_bytes()),
            Self::Double(v) => Some(format!("{v:?}").into_bytes()),
            Self::Bytes(v) => Some(v.clone()),
            Self::Text(v) => Some(v.clone().into_bytes()),
        }
    }
}

/// The columns of a read, with their kinds.
struct Columns<'a> {
    names: Vec<&'a str>,
    kinds: Vec<Kind>,
}

impl<'a> Columns<'a> {
    fn new(columns: impl IntoIterator<Item = &'a Column>) -> Self {
        let (names, kinds) =
            columns.into_iter().map(|c| (c.name.as_str(), Kind::of(&c.data_type))).unzip();
        Self { names, kinds }
    }

    /// The primary key's columns of `table` (a key column the plan lacks is read as text).
    fn key(table: &'a SliceTable) -> Self {
        let kinds = table
            .primary_key
            .iter()
            .map(|k| {
                table
                    .columns
                    .iter()
                    .find(|c| &c.name == k)
                    .map_or(Kind::Text, |c| Kind::of(&c.data_type))
            })
            .collect();
        Self { names: table.primary_key.iter().map(String::as_str).collect(), kinds }
    }

    fn select_list(&self) -> String {
        self.names.iter().zip(&self.kinds).map(|(n, k)| k.select(n)).collect::<Vec<_>>().join(", ")
    }

    fn decode(&self, row: &MySqlRow) -> Result<Vec<Value>, sqlx::Error> {
        self.kinds.iter().enumerate().map(|(i, k)| k.decode(row, i)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant

/// The tenant id typed by the key that holds it: the root's key, or (without a root) the
/// first table's tenant column.
fn tenant_value(plan: &SlicePlan, tenant: &str) -> Result<Value, SliceError> {
    let (table, column, data_type) = match &plan.root {
        Some(root) => (root.table.clone(), root.column.clone(), root.data_type.clone()),
        None => tenant_column(plan)?,
    };
    typed_id(&table, &column, &data_type, tenant)
}

/// A tenant id typed as the column `table`.`column` of type `data_type` holds it (see
/// [`tenant_value`]).
fn typed_id(table: &str, column: &str, data_type: &str, tenant: &str) -> Result<Value, SliceError> {
    let bad = || SliceError::BadTenant {
        tenant: tenant.to_owned(),
        table: table.to_owned(),
        column: column.to_owned(),
        data_type: data_type.to_owned(),
    };
    let base = data_type.trim().to_ascii_lowercase();
    Ok(match Kind::of(data_type) {
        Kind::Int => Value::Int(tenant.parse().map_err(|_| bad())?),
        Kind::UInt | Kind::Bit => Value::UInt(tenant.parse().map_err(|_| bad())?),
        Kind::Bytes => Value::Bytes(binary_tenant(&base, tenant).ok_or_else(bad)?),
        _ if base == "uuid" => {
            Value::Text(uuid::Uuid::parse_str(tenant).map_err(|_| bad())?.hyphenated().to_string())
        }
        _ => Value::Text(tenant.to_owned()),
    })
}

/// The bytes a binary key holds for `tenant`: a uuid's 16 bytes for `BINARY(16)` (how a uuid
/// is usually stored in binary), else the id's UTF-8 bytes, padded with zero bytes to the
/// width of a `BINARY(n)` (as the server pads what it stores there). `None` when the id is
/// wider than a `BINARY(n)`, or the key is a spatial type.
fn binary_tenant(data_type: &str, tenant: &str) -> Option<Vec<u8>> {
    let base = data_type.split(['(', ' ']).next().unwrap_or_default();
    match base {
        "binary" => {
            let width: usize = data_type
                .strip_prefix("binary(")
                .and_then(|rest| rest.split(')').next())
                .map_or(Some(1), |n| n.trim().parse().ok())?;
            if width == 16
                && let Ok(uuid) = uuid::Uuid::parse_str(tenant)
            {
                return Some(uuid.as_bytes().to_vec());
            }
            let mut bytes = tenant.as_bytes().to_vec();
            (bytes.len() <= width).then(|| {
                bytes.resize(width, 0);
                bytes
            })
        }
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Some(tenant.as_bytes().to_vec())
        }
        _ => None,
    }
}

fn tenant_column(plan: &SlicePlan) -> Result<(String, String, String), SliceError> {
    for table in &plan.tables {
        for via in &table.via {
            if let Via::TenantColumn { column } = via
                && let Some(c) = table.columns.iter().find(|c| &c.name == column)
            {
                return Ok((table.name.clone(), column.clone(), c.data_type.clone()));
            }
        }
    }
    Err(SliceError::Refused(
        "the slice has neither a root nor a table with a tenant column: nothing holds the tenant id"
            .to_owned(),
    ))
}

/// The condition that selects a table's slice, the tenant id a `?` parameter wherever it
/// appears: a parameter takes the collation of the column it is compared with (a session
/// variable would bring the connection's, and a key of another collation would fail with
/// "Illegal mix of collations").
struct Selector {
    sql: String,
    /// How many `?` stand for the tenant id, in the order they appear.
    tenants: usize,
}

impl Selector {
    fn of(plan: &SlicePlan, table: &SliceTable) -> Self {
        let scope = |tenant| Scope { dialect: D, qualifier: "", tenant };
        let sql = sql::selector(plan, table, scope("?"));
        // Each occurrence of the one-character fragment lengthens the SQL by one: counted
        // this way, a `?` inside a quoted name is not mistaken for a parameter.
        let tenants = sql.len() - sql::selector(plan, table, scope("")).len();
        Self { sql, tenants }
    }

    /// `q` with the tenant id bound for each of this selector's parameters, next.
    fn bind<'q>(
        &self,
        tenant: &Value,
        mut q: Query<'q, MySql, MySqlArguments>,
    ) -> Query<'q, MySql, MySqlArguments> {
        for _ in 0..self.tenants {
            q = tenant.bind(q);
        }
        q
    }
}

// ---------------------------------------------------------------------------------------------
// Session state

/// What a session held before rewind changed it.
struct Saved {
    time_zone: String,
    foreign_key_checks: i64,
}

async fn save(conn: &mut MySqlConnection, side: &str) -> Result<Saved, SliceError> {
    let row = sqlx::query(
        "SELECT CAST(@@session.time_zone AS CHAR), CAST(@@session.foreign_key_checks AS SIGNED)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db(format!("read the {side}'s session settings")))?;
    Ok(Saved {
        time_zone: text(&row, 0)?,
        foreign_key_checks: row
            .try_get::<i64, _>(1)
            .map_err(db(format!("read the {side}'s foreign_key_checks")))?,
    })
}

/// Puts back what [`save`] read and clears rewind's variables.
async fn restore(conn: &mut MySqlConnection, saved: &Saved, side: &str) -> Result<(), SliceError> {
    sqlx::query("SET time_zone = ?, foreign_key_checks = ?, @rewind_restore = NULL")
        .bind(saved.time_zone.as_str())
        .bind(saved.foreign_key_checks)
        .execute(&mut *conn)
        .await
        .map_err(db(format!("restore the {side}'s session settings")))?;
    Ok(())
}

/// Ends a failed attempt: rolls back and restores the session, ignoring errors (the first
/// error is the one to report).
async fn abandon(conn: &mut MySqlConnection, saved: &Saved, side: &str) {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    let _ = restore(conn, saved, side).await;
}

// ---------------------------------------------------------------------------------------------
// Copy

/// Copies the tenant's slice from `src` to `dst` in one destination transaction: deletes the
/// destination's slice rows (children first, by primary key), inserts the source's (parents
/// first, streamed in multi-row statements), checks every foreign key of the copied tables,
/// and commits. Source and destination must have every planned table with the same copied
/// columns (`COLUMN_TYPE` included), else [`SliceError::Refused`]; a copied row that would
/// reference a missing row is refused too, and nothing is written. See the module for what
/// the sessions are set to while the copy runs; on failure both transactions are rolled back
/// and both sessions restored (best effort). A failure to restore a session after the commit
/// is reported although the rows are written: the copy can be run again.
pub async fn copy(
    src: &mut MySqlConnection,
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(src, dst, plan, tenant, None).await
}

/// Copies the tenant's slice from `src` to `dst` as the new tenant `new` ([`crate::remap`]):
/// as [`copy`] (one destination transaction, the same session settings, trigger rule,
/// reference and orphan checks), but the new tenant's rows are deleted and the source's rows
/// inserted with every changed cell rewritten as they stream through: the tenant's columns
/// hold the new id; uuid keys (`UUID`, `BINARY(16)`, and text keys every value of which in the
/// slice is a uuid, checked before anything is written) get [`remap::new_uuid`]'s values;
/// integer keys are numbered after the largest of the table's values, its `AUTO_INCREMENT`
/// and [`remap::KEY_MAP`]'s, the old→new map written to the destination's `rewind_key_map` in
/// the copy's transaction (a retry reuses it). The rows are inserted with these explicit keys,
/// which moves the table's `AUTO_INCREMENT` past them; a concurrent insert that took one of
/// them first makes the copy fail on the duplicate key and roll back, map included. The old
/// tenant's rows are only read.
pub async fn copy_as(
    src: &mut MySqlConnection,
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
) -> Result<CopyReport, SliceError> {
    copy_maybe_as(src, dst, plan, tenant, Some(new)).await
}

async fn copy_maybe_as(
    src: &mut MySqlConnection,
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant_id: &str,
    new: Option<NewTenant<'_>>,
) -> Result<CopyReport, SliceError> {
    let tenant = tenant_value(plan, tenant_id)?;
    let new_value = match new {
        Some(n) => Some(new_tenant_value(plan, tenant_id, &tenant, n.id)?),
        None => None,
    };
    let src_schema = schema(src).await?;
    let dst_schema = schema(dst).await?;
    check_tables(plan, &src_schema, "source")?;
    check_tables(plan, &dst_schema, "destination")?;
    check_triggers(dst, plan).await?;
    if new.is_some() {
        // DDL commits implicitly: created before the copy's transaction begins.
        run(dst, CREATE_KEY_MAP).await?;
    }

    let src_saved = save(src, "source").await?;
    let dst_saved = save(dst, "destination").await?;
    let remapping = new.zip(new_value.as_ref());
    let result = copy_in_sessions(src, dst, plan, &tenant, &dst_schema, remapping).await;
    match result {
        Ok(report) => {
            restore(dst, &dst_saved, "destination").await?;
            restore(src, &src_saved, "source").await?;
            Ok(report)
        }
        Err(e) => {
            abandon(dst, &dst_saved, "destination").await;
            abandon(src, &src_saved, "source").await;
            Err(e)
        }
    }
}

/// Refuses a copy into a destination where a planned table has a trigger that does not test
/// `@rewind_restore`: MariaDB/MySQL cannot turn triggers off for a session, so it would fire
/// on the restored rows (a `BEFORE INSERT` trigger that sets `updated_at` changes them, an
/// audit trigger records the restore as user activity).
async fn check_triggers(dst: &mut MySqlConnection, plan: &SlicePlan) -> Result<(), SliceError> {
    let rows = sqlx::query(
        "SELECT EVENT_OBJECT_TABLE, TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS \
         WHERE EVENT_OBJECT_SCHEMA = DATABASE() ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME",
    )
    .fetch_all(&mut *dst)
    .await
    .map_err(db("read the destination's triggers from information_schema.TRIGGERS"))?;
    let mut unguarded = Vec::new();
    for row in &rows {
        let table = text(row, 0)?;
        if plan.table(&table).is_none() {
            continue;
        }
        if !tests_restore(&text(row, 2)?) {
            unguarded.push(format!("`{}` on `{table}`", text(row, 1)?));
        }
    }
    if unguarded.is_empty() {
        return Ok(());
    }
    Err(SliceError::Refused(format!(
        "the destination has trigger(s) on restored tables that would fire during the copy: {}; \
         MariaDB/MySQL cannot turn triggers off for a session, so guard each trigger's body with \
         `IF @rewind_restore IS NULL THEN … END IF` (rewind sets `@rewind_restore = 1` while it \
         copies); nothing was written",
        unguarded.join(", ")
    )))
}

/// Whether a trigger's body mentions `@rewind_restore` (in any case, its name quoted or not).
fn tests_restore(body: &str) -> bool {
    let plain: String = body.chars().filter(|c| !matches!(c, '`' | '\'' | '"')).collect::<String>();
    plain.to_ascii_lowercase().contains("@rewind_restore")
}

/// Refuses a plan whose tables or copied columns `schema` lacks or types otherwise.
fn check_tables(plan: &SlicePlan, schema: &Schema, side: &str) -> Result<(), SliceError> {
    for planned in &plan.tables {
        let Some(table) = schema.tables.get(&planned.name) else {
            return Err(SliceError::Refused(format!("the {side} has no table `{}`", planned.name)));
        };
        for column in planned.copied() {
            match table.column(&column.name) {
                None => {
                    return Err(SliceError::Refused(format!(
                        "the {side}'s table `{}` has no column `{}`",
                        planned.name, column.name
                    )));
                }
                Some(c) if c.data_type != column.data_type || c.generated => {
                    return Err(SliceError::Refused(format!(
                        "the {side}'s column `{}`.`{}` is {}`{}`, the plan's is `{}`",
                        planned.name,
                        column.name,
                        if c.generated { "generated " } else { "" },
                        c.data_type,
                        column.data_type
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

async fn copy_in_sessions(
    src: &mut MySqlConnection,
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    src_tenant: &Value,
    dst_schema: &Schema,
    new: Option<(NewTenant<'_>, &Value)>,
) -> Result<CopyReport, SliceError> {
    run(src, "SET time_zone = '+00:00'").await?;
    run(src, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
    check_source_root(src, plan, src_tenant).await?;
    // The source's keys are read (and text keys checked) before anything is written.
    let mut remapper = match new {
        Some((n, _)) => Some(Remapper::new(src, plan, src_tenant, n, None).await?),
        None => None,
    };
    run(dst, "SET time_zone = '+00:00', foreign_key_checks = 0, @rewind_restore = 1").await?;
    run(dst, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
    run(dst, "START TRANSACTION").await?;
    if let (Some(r), Some((n, _))) = (&mut remapper, new) {
        r.allocate(dst, n.id).await?;
    }
    // The destination's slice is the new tenant's when restoring as one.
    let tenant = new.map_or(src_tenant, |(_, v)| v);

    let outside = outside_references(plan, dst_schema);
    let dangling_before = count_outside_dangling(dst, &outside).await?;
    let pinned = pinned_keys(dst, plan, tenant, dst_schema).await?;
    let mut deleted = BTreeMap::new();
    for table in plan.tables.iter().rev() {
        deleted.insert(table.name.as_str(), delete_slice(dst, plan, table, tenant).await?);
    }
    if let Some((n, _)) = new {
        claim_new_tenant(dst, n.id, deleted.values().sum()).await?;
    }
    let mut report = CopyReport::default();
    for table in &plan.tables {
        let inserted = insert_slice(src, dst, plan, table, src_tenant, remapper.as_ref()).await?;
        report.tables.push(TableCopy {
            table: table.name.clone(),
            deleted: deleted.get(table.name.as_str()).copied().unwrap_or(0),
            inserted,
        });
    }
    for table in &plan.tables {
        check_references(dst, plan, table, tenant, dst_schema).await?;
    }
    check_pinned(dst, &pinned).await?;
    let dangling_after = count_outside_dangling(dst, &outside).await?;
    let broken: Vec<String> = outside
        .iter()
        .zip(dangling_before.iter().zip(&dangling_after))
        .filter(|(_, (before, after))| after > before)
        .map(|((child, fk), (before, after))| {
            format!(
                "{} row(s) of `{child}`, which the plan leaves out, would reference rows of `{}` \
                 that the copy deleted (foreign key `{}`, {})",
                after - before,
                fk.parent,
                fk.name,
                fk.columns.join(", ")
            )
        })
        .collect();
    if !broken.is_empty() {
        return Err(SliceError::Refused(format!("{}; nothing was written", broken.join("; "))));
    }
    run(dst, "COMMIT").await?;
    run(src, "COMMIT").await?;
    Ok(report)
}

/// Refuses a copy whose source has no root row for the tenant: the copy would delete the
/// destination's slice and insert nothing. Read in the source's snapshot, before anything is
/// deleted.
async fn check_source_root(
    src: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &Value,
) -> Result<(), SliceError> {
    let Some(root) = &plan.root else { return Ok(()) };
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE {} = ?",
        D.quote(&root.table),
        D.quote(&root.column)
    );
    let context = format!("count the tenant's `{}` rows in the source", root.table);
    let row = tenant.bind(stmt(sql)).fetch_one(&mut *src).await.map_err(db(&context))?;
    let found: i64 = row.try_get(0).map_err(db(&context))?;
    if found > 0 {
        return Ok(());
    }
    let shown = match tenant {
        Value::Bytes(b) => {
            format!("0x{}", b.iter().map(|x| format!("{x:02X}")).collect::<String>())
        }
        other => {
            other.canonical().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
        }
    };
    Err(SliceError::Refused(format!(
        "the source has no `{}` row with `{}` = {shown}: nothing to restore; nothing was deleted",
        root.table, root.column
    )))
}

/// Deletes the destination's slice rows of `table`: their keys are read with the selector
/// (a plain, lock-free read), then deleted by key in batches; a table without a primary key
/// is deleted by the selector.
async fn delete_slice(
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    table: &SliceTable,
    tenant: &Value,
) -> Result<u64, SliceError> {
    let name = D.quote(&table.name);
    let selector = Selector::of(plan, table);
    if table.primary_key.is_empty() {
        let done = selector
            .bind(tenant, stmt(format!("DELETE FROM {name} WHERE {}", selector.sql)))
            .execute(&mut *dst)
            .await
            .map_err(db(format!("delete the tenant's rows from `{}`", table.name)))?;
        return Ok(done.rows_affected());
    }
    let key = Columns::key(table);
    let mut keys: Vec<Vec<Value>> = Vec::new();
    let context = format!("read the tenant's keys in `{}`", table.name);
    let mut rows = selector
        .bind(
            tenant,
            stmt(format!("SELECT {} FROM {name} WHERE {}", key.select_list(), selector.sql)),
        )
        .fetch(&mut *dst);
    while let Some(row) = rows.try_next().await.map_err(db(&context))? {
        keys.push(key.decode(&row).map_err(db(&context))?);
    }
    drop(rows);
    let lhs = format!("({})", D.list(key.names.iter().copied()));
    let tuple = format!("({})", vec!["?"; key.names.len()].join(", "));
    let mut deleted = 0;
    for batch in keys.chunks(DELETE_BATCH) {
        let sql = format!(
            "DELETE FROM {name} WHERE {lhs} IN ({})",
            vec![tuple.as_str(); batch.len()].join(", ")
        );
        let mut q = stmt(sql).persistent(batch.len() == DELETE_BATCH);
        for value in batch.iter().flatten() {
            q = value.bind(q);
        }
        let done = q
            .execute(&mut *dst)
            .await
            .map_err(db(format!("delete the tenant's rows from `{}` by key", table.name)))?;
        deleted += done.rows_affected();
    }
    Ok(deleted)
}

/// Streams the source's slice rows of `table` into the destination by multi-row inserts.
async fn insert_slice(
    src: &mut MySqlConnection,
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    table: &SliceTable,
    tenant: &Value,
    remapper: Option<&Remapper<'_>>,
) -> Result<u64, SliceError> {
    let index = plan.tables.iter().position(|t| t.name == table.name).unwrap_or(usize::MAX);
    let columns = Columns::new(table.copied());
    if columns.names.is_empty() {
        return Ok(0);
    }
    let name = D.quote(&table.name);
    let selector = Selector::of(plan, table);
    let select = format!("SELECT {} FROM {name} WHERE {}", columns.select_list(), selector.sql);
    let mut batch = Batch::new(&table.name, &columns);
    let mut rows = selector.bind(tenant, stmt(select)).fetch(&mut *src);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db(format!("read the tenant's rows of `{}` from the source", table.name)))?
    {
        let mut values = columns
            .decode(&row)
            .map_err(db(format!("read a row of `{}` from the source", table.name)))?;
        if let Some(r) = remapper {
            r.rewrite(index, &table.name, &columns, &mut values)?;
        }
        if batch.push(values) {
            batch.flush(dst).await?;
        }
    }
    batch.flush(dst).await?;
    Ok(batch.inserted)
}

/// Rows waiting for one multi-row `INSERT`.
struct Batch<'a> {
    table: &'a str,
    head: String,
    tuple: String,
    max_rows: usize,
    rows: Vec<Vec<Value>>,
    bytes: usize,
    inserted: u64,
}

impl<'a> Batch<'a> {
    fn new(table: &'a str, columns: &Columns<'_>) -> Self {
        let n = columns.names.len();
        Self {
            table,
            head: format!(
                "INSERT INTO {} ({}) VALUES ",
                D.quote(table),
                D.list(columns.names.iter().copied())
            ),
            tuple: format!("({})", vec!["?"; n].join(", ")),
            max_rows: MAX_INSERT_ROWS.min(MAX_PLACEHOLDERS / n).max(1),
            rows: Vec::new(),
            bytes: 0,
            inserted: 0,
        }
    }

    /// Adds a row; whether the batch is full.
    fn push(&mut self, row: Vec<Value>) -> bool {
        self.bytes += row.iter().map(Value::size).sum::<usize>();
        self.rows.push(row);
        self.rows.len() >= self.max_rows || self.bytes >= MAX_INSERT_BYTES
    }

    async fn flush(&mut self, dst: &mut MySqlConnection) -> Result<(), SliceError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let sql = format!("{}{}", self.head, vec![self.tuple.as_str(); self.rows.len()].join(", "));
        let mut q = stmt(sql).persistent(self.rows.len() == self.max_rows);
        for value in self.rows.iter().flatten() {
            q = value.bind(q);
        }
        let done = q
            .execute(&mut *dst)
            .await
            .map_err(db(format!("insert the tenant's rows into `{}`", self.table)))?;
        self.inserted += done.rows_affected();
        self.rows.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Foreign keys into planned tables from tables the plan leaves out (excluded, or outside
/// `tables`): with `foreign_key_checks = 0`, deleting a slice row they reference would leave
/// them dangling unless the copy puts the row back.
fn outside_references<'a>(
    plan: &SlicePlan,
    schema: &'a Schema,
) -> Vec<(&'a str, &'a crate::schema::ForeignKey)> {
    schema
        .tables
        .values()
        .filter(|t| plan.table(&t.name).is_none())
        .flat_map(|t| t.foreign_keys.iter().map(move |fk| (t.name.as_str(), fk)))
        .filter(|(_, fk)| plan.table(&fk.parent).is_some())
        .collect()
}

/// A foreign key between two planned tables, and the parent keys it holds in rows outside the
/// child's slice that point into the tenant's parent rows (another tenant's row, or a row of
/// no tenant, referencing this tenant's): deleting those parent rows leaves them dangling
/// (`foreign_key_checks = 0`) unless the source has them too.
struct Pinned<'a> {
    child: &'a str,
    fk: &'a ForeignKey,
    keys: Vec<Vec<Value>>,
}

/// The [`Pinned`] keys of every foreign key between planned tables, read before the deletes
/// (the planned tables' selectors then still describe the rows the copy deletes). Each read
/// starts from the tenant's parent rows and follows the foreign key into the child, so it
/// stays on the tenant's rows when the key is indexed.
async fn pinned_keys<'a>(
    dst: &mut MySqlConnection,
    plan: &'a SlicePlan,
    tenant: &Value,
    dst_schema: &'a Schema,
) -> Result<Vec<Pinned<'a>>, SliceError> {
    let mut out = Vec::new();
    for table in &plan.tables {
        let Some(catalog) = dst_schema.tables.get(&table.name) else { continue };
        for fk in &catalog.foreign_keys {
            let Some(parent) = plan.table(&fk.parent) else { continue };
            // A table whose one way into the slice is this NOT NULL key selects every row that
            // references the tenant's parent rows by it: none can be outside the slice.
            let decides_alone = matches!(
                table.via.as_slice(),
                [crate::plan::Via::Parent { constraint, nullable: false, .. }] if *constraint == fk.name
            );
            if decides_alone {
                continue;
            }
            let child_selector = Selector::of(plan, table);
            let parent_selector = Selector::of(plan, parent);
            let columns = Columns::new(
                fk.columns.iter().filter_map(|c| catalog.columns.iter().find(|col| &col.name == c)),
            );
            if columns.names.len() != fk.columns.len() {
                continue;
            }
            // `IS NOT NULL` spelled out: a mostly NULL key is then read by a range of its
            // index rather than by a scan of the table.
            let set: Vec<String> =
                fk.columns.iter().map(|c| format!("{} IS NOT NULL", D.quote(c))).collect();
            let sql = format!(
                "SELECT DISTINCT {} FROM {} WHERE {} AND ({}) IN (SELECT {} FROM {} WHERE {}) \
                 AND NOT COALESCE(({}), FALSE)",
                columns.select_list(),
                D.quote(&table.name),
                set.join(" AND "),
                D.list(fk.columns.iter().map(String::as_str)),
                D.list(fk.parent_columns.iter().map(String::as_str)),
                D.quote(&parent.name),
                parent_selector.sql,
                child_selector.sql
            );
            let q = child_selector.bind(tenant, parent_selector.bind(tenant, stmt(sql)));
            let context = format!(
                "read the rows of `{}` outside the slice that reference the tenant's `{}` rows",
                table.name, parent.name
            );
            let mut keys = Vec::new();
            let mut rows = q.fetch(&mut *dst);
            while let Some(row) = rows.try_next().await.map_err(db(&context))? {
                keys.push(columns.decode(&row).map_err(db(&context))?);
            }
            drop(rows);
            if !keys.is_empty() {
                out.push(Pinned { child: &table.name, fk, keys });
            }
        }
    }
    Ok(out)
}

/// Refuses the copy when a [`Pinned`] key no longer has its parent row: the source lacks a
/// row that a row outside the slice still references.
async fn check_pinned(dst: &mut MySqlConnection, pinned: &[Pinned<'_>]) -> Result<(), SliceError> {
    let mut broken = Vec::new();
    for p in pinned {
        let c = |col: &String| format!("rewind_c.{}", D.quote(col));
        let lhs = format!("({})", p.fk.columns.iter().map(c).collect::<Vec<_>>().join(", "));
        let tuple = format!("({})", vec!["?"; p.fk.columns.len()].join(", "));
        let join: Vec<String> =
            p.fk.columns
                .iter()
                .zip(&p.fk.parent_columns)
                .map(|(col, parent)| format!("rewind_p.{} = {}", D.quote(parent), c(col)))
                .collect();
        let mut dangling = 0i64;
        for batch in p.keys.chunks(DELETE_BATCH) {
            let sql = format!(
                "SELECT COUNT(*) FROM {} AS rewind_c WHERE {lhs} IN ({}) AND NOT EXISTS \
                 (SELECT 1 FROM {} AS rewind_p WHERE {})",
                D.quote(p.child),
                vec![tuple.as_str(); batch.len()].join(", "),
                D.quote(&p.fk.parent),
                join.join(" AND ")
            );
            let mut q = stmt(sql);
            for value in batch.iter().flatten() {
                q = value.bind(q);
            }
            let context = format!("check the foreign key `{}` of `{}`", p.fk.name, p.child);
            let row = q.fetch_one(&mut *dst).await.map_err(db(&context))?;
            dangling += row.try_get::<i64, _>(0).map_err(db(&context))?;
        }
        if dangling > 0 {
            broken.push(format!(
                "{dangling} row(s) of `{}` outside the tenant's slice would reference rows of `{}` \
                 that the copy deleted and the source does not have (foreign key `{}`, {})",
                p.child,
                p.fk.parent,
                p.fk.name,
                p.fk.columns.join(", ")
            ));
        }
    }
    if broken.is_empty() {
        return Ok(());
    }
    Err(SliceError::Refused(format!("{}; nothing was written", broken.join("; "))))
}

/// Per reference of [`outside_references`], the rows of its table with the key set and no
/// parent row (counted before and after the copy: only rows the copy orphaned refuse it).
async fn count_outside_dangling(
    dst: &mut MySqlConnection,
    outside: &[(&str, &crate::schema::ForeignKey)],
) -> Result<Vec<i64>, SliceError> {
    let mut counts = Vec::with_capacity(outside.len());
    for (child, fk) in outside {
        let c = |col: &String| format!("rewind_c.{}", D.quote(col));
        let set: Vec<String> =
            fk.columns.iter().map(|col| format!("{} IS NOT NULL", c(col))).collect();
        let join: Vec<String> = fk
            .columns
            .iter()
            .zip(&fk.parent_columns)
            .map(|(col, p)| format!("rewind_p.{} = {}", D.quote(p), c(col)))
            .collect();
        let sql = format!(
            "SELECT COUNT(*) FROM {} AS rewind_c WHERE {} AND NOT EXISTS \
             (SELECT 1 FROM {} AS rewind_p WHERE {})",
            D.quote(child),
            set.join(" AND "),
            D.quote(&fk.parent),
            join.join(" AND ")
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *dst)
            .await
            .map_err(db(format!("check the foreign key `{}` of `{child}`", fk.name)))?;
        counts.push(n);
    }
    Ok(counts)
}

/// Refuses the copy when a slice row of `table` has a foreign key set (every column not
/// NULL) and no parent row: the checks the server skipped with `foreign_key_checks = 0`.
async fn check_references(
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    table: &SliceTable,
    tenant: &Value,
    dst_schema: &Schema,
) -> Result<(), SliceError> {
    let Some(catalog) = dst_schema.tables.get(&table.name) else { return Ok(()) };
    let selector = Selector::of(plan, table);
    for fk in &catalog.foreign_keys {
        let child = |c: &String| format!("rewind_c.{}", D.quote(c));
        let set: Vec<String> =
            fk.columns.iter().map(|c| format!("{} IS NOT NULL", child(c))).collect();
        let join: Vec<String> = fk
            .columns
            .iter()
            .zip(&fk.parent_columns)
            .map(|(c, p)| format!("rewind_p.{} = {}", D.quote(p), child(c)))
            .collect();
        let sql = format!(
            "SELECT COUNT(*) FROM {} AS rewind_c WHERE ({}) AND {} AND NOT EXISTS \
             (SELECT 1 FROM {} AS rewind_p WHERE {})",
            D.quote(&table.name),
            selector.sql,
            set.join(" AND "),
            D.quote(&fk.parent),
            join.join(" AND ")
        );
        let context = format!("check the foreign key `{}` of `{}`", fk.name, table.name);
        let row =
            selector.bind(tenant, stmt(sql)).fetch_one(&mut *dst).await.map_err(db(&context))?;
        let missing: i64 = row.try_get(0).map_err(db(&context))?;
        if missing > 0 {
            return Err(SliceError::Refused(format!(
                "{missing} restored row(s) of `{}` would reference no row of `{}` by the foreign key \
                 `{}` ({}); nothing was written",
                table.name,
                fk.parent,
                fk.name,
                fk.columns.join(", ")
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Digest

/// The tenant slice's digest on `conn`, every column included (generated ones too), read in one
/// consistent-snapshot, read-only transaction with `time_zone = '+00:00'`.
pub async fn digest(
    conn: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<SliceDigest, SliceError> {
    let tenant = tenant_value(plan, tenant)?;
    let saved = save(conn, "connection").await?;
    match digest_in_session(conn, plan, &tenant, None).await {
        Ok(d) => {
            restore(conn, &saved, "connection").await?;
            Ok(d)
        }
        Err(e) => {
            abandon(conn, &saved, "connection").await;
            Err(e)
        }
    }
}

async fn digest_in_session(
    conn: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &Value,
    new: Option<(NewTenant<'_>, &KeyMaps)>,
) -> Result<SliceDigest, SliceError> {
    run(conn, "SET time_zone = '+00:00'").await?;
    run(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
    let remapper = match new {
        Some((n, maps)) => Some(Remapper::new(conn, plan, tenant, n, Some(maps)).await?),
        None => None,
    };
    let mut out = SliceDigest::default();
    for (index, table) in plan.tables.iter().enumerate() {
        let columns = Columns::new(&table.columns);
        let selector = Selector::of(plan, table);
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            columns.select_list(),
            D.quote(&table.name),
            selector.sql
        );
        let mut hasher = RowHasher::default();
        let mut rows = selector.bind(tenant, stmt(sql)).fetch(&mut *conn);
        let context = format!("digest the tenant's rows of `{}`", table.name);
        while let Some(row) = rows.try_next().await.map_err(db(&context))? {
            let mut values = columns.decode(&row).map_err(db(&context))?;
            if let Some(r) = &remapper {
                r.rewrite(index, &table.name, &columns, &mut values)?;
            }
            let cells: Vec<Option<Vec<u8>>> = values.iter().map(Value::canonical).collect();
            hasher.add_row(cells.iter().map(Option::as_deref));
        }
        drop(rows);
        out.tables.push(hasher.finish(&table.name));
    }
    run(conn, "COMMIT").await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Restore as a new tenant

/// Creates [`remap::KEY_MAP`] on the destination if it is missing (keys as exact text).
const CREATE_KEY_MAP: &str = "CREATE TABLE IF NOT EXISTS rewind_key_map (\
    new_tenant VARCHAR(255) NOT NULL, tbl VARCHAR(64) NOT NULL, old_key VARCHAR(64) NOT NULL, \
    new_key VARCHAR(64) NOT NULL, PRIMARY KEY (new_tenant, tbl, old_key)) \
    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

/// Records (in [`remap::KEY_MAP`], in the copy's transaction) that a copy wrote `new_tenant`,
/// or refuses it when the destination already had `deleted` rows of it that no earlier copy
/// as it wrote ([`remap::refuse_existing`]).
async fn claim_new_tenant(
    dst: &mut MySqlConnection,
    new_tenant: &str,
    deleted: u64,
) -> Result<(), SliceError> {
    let context = "record the new tenant in rewind_key_map";
    let claimed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM rewind_key_map WHERE new_tenant = ? AND tbl = ? FOR UPDATE",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .fetch_one(&mut *dst)
    .await
    .map_err(db(context))?;
    if deleted > 0 && claimed == 0 {
        return Err(remap::refuse_existing(new_tenant, deleted));
    }
    sqlx::query(
        "INSERT IGNORE INTO rewind_key_map (new_tenant, tbl, old_key, new_key) \
         VALUES (?, ?, '', '')",
    )
    .bind(new_tenant)
    .bind(remap::CLAIM_TABLE)
    .execute(&mut *dst)
    .await
    .map_err(db(context))?;
    Ok(())
}

/// The integer keys' maps of a new tenant, by table: old → new ([`key_maps`]).
type KeyMaps = BTreeMap<String, HashMap<String, String>>;

/// Most rows of the key map written by one `INSERT`.
const MAP_BATCH: usize = 1_000;

/// The new tenant id typed as the tenant is ([`tenant_value`]); refused when it is the old
/// tenant (the copy would rewrite the tenant's keys in place).
fn new_tenant_value(
    plan: &SlicePlan,
    tenant: &str,
    old: &Value,
    new: &str,
) -> Result<Value, SliceError> {
    let value = tenant_value(plan, new)?;
    if &value == old {
        return Err(SliceError::Refused(format!(
            "`as` {new:?} is the tenant {tenant:?} itself: a restore as a new tenant needs \
             another id; nothing was written"
        )));
    }
    Ok(value)
}

/// A key of a map: a uuid, or an integer (signed or unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MapKey {
    Uuid(uuid::Uuid),
    Int(i128),
}

impl MapKey {
    /// `value` as a key of `kind`; `None`: a value that cannot be one (NULL, another type).
    fn of(value: &Value, kind: KeyKind) -> Option<Self> {
        match (kind, value) {
            (KeyKind::Uuid, Value::Text(s)) => uuid::Uuid::parse_str(s.trim()).ok().map(Self::Uuid),
            (KeyKind::Uuid, Value::Bytes(b)) => uuid::Uuid::from_slice(b).ok().map(Self::Uuid),
            (KeyKind::Integer, Value::Int(n)) => Some(Self::Int(i128::from(*n))),
            (KeyKind::Integer, Value::UInt(n)) => Some(Self::Int(i128::from(*n))),
            (KeyKind::Integer, Value::Text(s)) => s.trim().parse().ok().map(Self::Int),
            _ => None,
        }
    }

    /// The key as a column of `kind` holds it: a uuid as its 16 bytes in a binary column, as
    /// lowercase hyphenated text otherwise; an integer as the column's integer or as text.
    fn value(self, kind: Kind) -> Option<Value> {
        match (self, kind) {
            (Self::Uuid(u), Kind::Bytes) => Some(Value::Bytes(u.as_bytes().to_vec())),
            (Self::Uuid(u), Kind::Text) => Some(Value::Text(u.hyphenated().to_string())),
            (Self::Int(n), Kind::Int) => i64::try_from(n).ok().map(Value::Int),
            (Self::Int(n), Kind::UInt | Kind::Bit) => u64::try_from(n).ok().map(Value::UInt),
            (Self::Int(n), Kind::Text) => Some(Value::Text(n.to_string())),
            _ => None,
        }
    }

    fn text(self) -> String {
        match self {
            Self::Uuid(u) => u.hyphenated().to_string(),
            Self::Int(n) => n.to_string(),
        }
    }
}

/// Rewrites the cells of a source row as the restored new tenant's row has them.
struct Remapper<'a> {
    new: NewTenant<'a>,
    /// Per planned table and tenant column: the old and the new tenant typed as that column.
    tenants: HashMap<(usize, String), (Value, Value)>,
    /// Per owner: its keys in the slice (in the order read), and old → new.
    olds: Vec<Vec<MapKey>>,
    maps: Vec<HashMap<MapKey, MapKey>>,
}

impl<'a> Remapper<'a> {
    /// Reads every owner's keys of the tenant's slice on `src` (a text key's values checked to
    /// be uuids), and derives the uuid keys' new values. Integer keys get theirs from `maps`
    /// (a digest: the destination's [`key_maps`]) or from [`Self::allocate`] (a copy).
    async fn new(
        src: &mut MySqlConnection,
        plan: &SlicePlan,
        tenant: &Value,
        new: NewTenant<'a>,
        maps: Option<&KeyMaps>,
    ) -> Result<Self, SliceError> {
        let mut tenants = HashMap::new();
        for (i, t) in plan.tables.iter().enumerate() {
            for c in &t.columns {
                if new.remap.source(i, &c.name) == Some(Source::Tenant) {
                    // A column that cannot hold the tenant's id holds no row of it: kept.
                    let typed = |id| typed_id(&t.name, &c.name, &c.data_type, id).ok();
                    let old = typed_canonical(tenant);
                    if let (Some(o), Some(n)) = (old.as_deref().and_then(typed), typed(new.id)) {
                        tenants.insert((i, c.name.clone()), (o, n));
                    }
                }
            }
        }
        let mut olds = Vec::new();
        let mut out = Vec::new();
        for owner in &new.remap.owners {
            let keys = owner_keys(src, plan, owner, tenant).await?;
            let map: HashMap<MapKey, MapKey> = match owner.kind {
                KeyKind::Uuid => keys
                    .iter()
                    .filter_map(|k| match k {
                        MapKey::Uuid(u) => {
                            Some((*k, MapKey::Uuid(remap::new_uuid_of(new.id, &owner.table, *u))))
                        }
                        MapKey::Int(_) => None,
                    })
                    .collect(),
                KeyKind::Integer => {
                    let kept = maps.and_then(|m| m.get(&owner.table));
                    keys.iter()
                        .filter_map(|k| {
                            let n = kept?.get(&k.text())?.trim().parse().ok()?;
                            Some((*k, MapKey::Int(n)))
                        })
                        .collect()
                }
            };
            olds.push(keys);
            out.push(map);
        }
        Ok(Self { new, tenants, olds, maps: out })
    }

    /// The integer keys' new values: those `rewind_key_map` has for the new tenant (locked),
    /// and for the others the next values after the largest of the table's keys, its
    /// `AUTO_INCREMENT` and the map's, written to the map. In the destination's transaction.
    async fn allocate(
        &mut self,
        dst: &mut MySqlConnection,
        new_id: &str,
    ) -> Result<(), SliceError> {
        for (i, owner) in self.new.remap.owners.iter().enumerate() {
            if owner.kind != KeyKind::Integer {
                continue;
            }
            let context = format!("map the keys `{}`.`{}` to new ones", owner.table, owner.column);
            let rows = sqlx::query(
                "SELECT old_key, new_key FROM rewind_key_map WHERE new_tenant = ? AND tbl = ? \
                 FOR UPDATE",
            )
            .bind(new_id)
            .bind(&owner.table)
            .fetch_all(&mut *dst)
            .await
            .map_err(db(&context))?;
            let mut kept: HashMap<String, i128> = HashMap::new();
            for row in &rows {
                let (old, new) = (text(row, 0)?, text(row, 1)?);
                let n = new.trim().parse().map_err(|_| {
                    SliceError::Refused(format!(
                        "rewind_key_map maps `{}` key {old} of {new_id:?} to {new:?}, which is not \
                         an integer",
                        owner.table
                    ))
                })?;
                kept.insert(old, n);
            }
            let Some(olds) = self.olds.get(i) else { continue };
            let mut missing: Vec<MapKey> =
                olds.iter().filter(|k| !kept.contains_key(&k.text())).copied().collect();
            missing.sort_by_key(|k| match k {
                MapKey::Int(n) => *n,
                MapKey::Uuid(_) => 0,
            });
            missing.dedup();
            let mut map: HashMap<MapKey, MapKey> = olds
                .iter()
                .filter_map(|k| Some((*k, MapKey::Int(*kept.get(&k.text())?))))
                .collect();
            if !missing.is_empty() {
                let mut next = largest_key(dst, owner).await? + 1;
                let mut added = Vec::with_capacity(missing.len());
                for k in missing {
                    map.insert(k, MapKey::Int(next));
                    added.push((k.text(), next.to_string()));
                    next += 1;
                }
                for batch in added.chunks(MAP_BATCH) {
                    let sql = format!(
                        "INSERT INTO rewind_key_map (new_tenant, tbl, old_key, new_key) VALUES {}",
                        vec!["(?, ?, ?, ?)"; batch.len()].join(", ")
                    );
                    let mut q = stmt(sql);
                    for (old, new) in batch {
                        q = q.bind(new_id).bind(&owner.table).bind(old.as_str()).bind(new.as_str());
                    }
                    q.execute(&mut *dst).await.map_err(db(&context))?;
                }
            }
            if let Some(m) = self.maps.get_mut(i) {
                *m = map;
            }
        }
        Ok(())
    }

    /// Rewrites `values` (a row of the plan's table `index`, read as `columns`) in place.
    fn rewrite(
        &self,
        index: usize,
        table: &str,
        columns: &Columns<'_>,
        values: &mut [Value],
    ) -> Result<(), SliceError> {
        for ((name, kind), value) in columns.names.iter().zip(&columns.kinds).zip(values) {
            match self.new.remap.source(index, name) {
                None => {}
                Some(Source::Tenant) => {
                    if let Some((old, new)) = self.tenants.get(&(index, (*name).to_owned()))
                        && value == old
                    {
                        *value = new.clone();
                    }
                }
                Some(Source::Key(k)) => {
                    let Some(owner) = self.new.remap.owners.get(k) else { continue };
                    let Some(old) = MapKey::of(value, owner.kind) else { continue };
                    let Some(new) = self.maps.get(k).and_then(|m| m.get(&old)) else { continue };
                    *value = new.value(*kind).ok_or_else(|| {
                        SliceError::Refused(format!(
                            "restore as a new tenant: the new value {} of `{table}`.`{name}` \
                             (was {}) does not fit the column; nothing was written",
                            new.text(),
                            old.text()
                        ))
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// The tenant id as text, to type it as another column holds it.
fn typed_canonical(tenant: &Value) -> Option<String> {
    match tenant {
        Value::Bytes(b) if b.len() == 16 => uuid::Uuid::from_slice(b).ok().map(|u| u.to_string()),
        Value::Bytes(b) => {
            let trimmed: &[u8] = match b.iter().rposition(|x| *x != 0) {
                Some(end) => b.get(..=end).unwrap_or_default(),
                None => &[],
            };
            String::from_utf8(trimmed.to_vec()).ok()
        }
        other => other.canonical().and_then(|v| String::from_utf8(v).ok()),
    }
}

/// The tenant's keys of `owner` in its slice on `conn`, as map keys; a text uuid key's
/// values each checked to be a uuid (refused naming the table, column and value).
async fn owner_keys(
    conn: &mut MySqlConnection,
    plan: &SlicePlan,
    owner: &remap::Owner,
    tenant: &Value,
) -> Result<Vec<MapKey>, SliceError> {
    let t = plan.table(&owner.table).ok_or_else(|| {
        SliceError::Refused(format!("the remap names `{}`, which is not planned", owner.table))
    })?;
    let kind = Kind::of(&owner.data_type);
    let selector = Selector::of(plan, t);
    let sql = format!(
        "SELECT {} FROM {} WHERE ({}) AND {} IS NOT NULL",
        kind.select(&owner.column),
        D.quote(&t.name),
        selector.sql,
        D.quote(&owner.column)
    );
    let context = format!("read the tenant's keys `{}`.`{}`", owner.table, owner.column);
    let mut keys = Vec::new();
    let mut rows = selector.bind(tenant, stmt(sql)).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.map_err(db(&context))? {
        let value = kind.decode(&row, 0).map_err(db(&context))?;
        let key = match (&value, owner.kind) {
            (Value::Text(s), KeyKind::Uuid) => {
                MapKey::Uuid(remap::text_uuid(&owner.table, &owner.column, s)?)
            }
            _ => MapKey::of(&value, owner.kind).ok_or_else(|| {
                SliceError::Refused(format!(
                    "restore as a new tenant: the key `{}`.`{}` holds {value:?}, which cannot be \
                     remapped; nothing was written",
                    owner.table, owner.column
                ))
            })?,
        };
        keys.push(key);
    }
    Ok(keys)
}

/// The largest value the integer key `owner` has had on the destination: in the table, its
/// `AUTO_INCREMENT` less one, and in [`remap::KEY_MAP`] (any new tenant's).
async fn largest_key(dst: &mut MySqlConnection, owner: &remap::Owner) -> Result<i128, SliceError> {
    let context = format!("read the largest key of `{}`.`{}`", owner.table, owner.column);
    let sql = format!(
        "SELECT CAST(MAX({}) AS CHAR) FROM {}",
        D.quote(&owner.column),
        D.quote(&owner.table)
    );
    let in_table: Option<String> =
        sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *dst).await.map_err(db(&context))?;
    let counter: Option<String> = sqlx::query_scalar(
        "SELECT CAST(AUTO_INCREMENT - 1 AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(&owner.table)
    .fetch_optional(&mut *dst)
    .await
    .map_err(db(&context))?
    .flatten();
    let in_map: Option<String> = sqlx::query_scalar(
        "SELECT CAST(MAX(CAST(new_key AS DECIMAL(39,0))) AS CHAR) FROM rewind_key_map \
         WHERE tbl = ?",
    )
    .bind(&owner.table)
    .fetch_one(&mut *dst)
    .await
    .map_err(db(&context))?;
    Ok([in_table, counter, in_map]
        .iter()
        .flatten()
        .filter_map(|v| v.trim().parse::<i128>().ok())
        .fold(0, i128::max))
}

/// The integer keys' maps of `new_tenant` kept on `conn` ([`remap::KEY_MAP`]), by table:
/// old → new. Empty when the map table does not exist.
pub async fn key_maps(
    conn: &mut MySqlConnection,
    new_tenant: &str,
) -> Result<BTreeMap<String, HashMap<String, String>>, SliceError> {
    let context = "read the key map rewind_key_map";
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'rewind_key_map'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db(context))?;
    let mut out: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    if exists == 0 {
        return Ok(out);
    }
    let rows = sqlx::query("SELECT tbl, old_key, new_key FROM rewind_key_map WHERE new_tenant = ?")
        .bind(new_tenant)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(context))?;
    for row in &rows {
        out.entry(text(row, 0)?).or_default().insert(text(row, 1)?, text(row, 2)?);
    }
    Ok(out)
}

/// The digest of the tenant's slice on `conn` (the source) as restored as the new tenant
/// `new`: every changed cell replaced as [`copy_as`] writes it (`maps`: the integer keys'
/// maps, [`key_maps`] of the destination). Equal to [`digest`] of the new tenant on the
/// destination when the copy restored it.
pub async fn digest_as(
    conn: &mut MySqlConnection,
    plan: &SlicePlan,
    tenant: &str,
    new: NewTenant<'_>,
    maps: &BTreeMap<String, HashMap<String, String>>,
) -> Result<SliceDigest, SliceError> {
    let value = tenant_value(plan, tenant)?;
    new_tenant_value(plan, tenant, &value, new.id)?;
    let saved = save(conn, "connection").await?;
    match digest_in_session(conn, plan, &value, Some((new, maps))).await {
        Ok(d) => {
            restore(conn, &saved, "connection").await?;
            Ok(d)
        }
        Err(e) => {
            abandon(conn, &saved, "connection").await;
            Err(e)
        }
    }
}
