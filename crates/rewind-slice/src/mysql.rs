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
//! session: a trigger that must not record a restore as user activity tests
//! `@rewind_restore IS NULL`. The tenant id is held in `@rewind_tenant`, bound with the key's
//! type.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sqlx::mysql::{MySqlArguments, MySqlConnection, MySqlRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, Row};

use crate::error::{SliceError, db};
use crate::plan::{SlicePlan, SliceTable, Via};
use crate::schema::{Column, Engine, ForeignKey, Schema, Table};
use crate::sql::{self, Dialect, Scope};
use crate::{CopyReport, RowHasher, SliceDigest, TableCopy};

const D: Dialect = Dialect::Backtick;
/// The session variable that holds the tenant id.
const TENANT_VAR: &str = "@rewind_tenant";
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
        tables.insert(
            name.clone(),
            Table {
                name,
                columns: Vec::new(),
                primary_key: Vec::new(),
                foreign_keys: Vec::new(),
                triggers: Vec::new(),
            },
        );
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
    let bad = || SliceError::BadTenant {
        tenant: tenant.to_owned(),
        table: table.clone(),
        column: column.clone(),
        data_type: data_type.clone(),
    };
    let base = data_type.trim().to_ascii_lowercase();
    Ok(match Kind::of(&data_type) {
        Kind::Int => Value::Int(tenant.parse().map_err(|_| bad())?),
        Kind::UInt => Value::UInt(tenant.parse().map_err(|_| bad())?),
        _ if base == "uuid" => {
            Value::Text(uuid::Uuid::parse_str(tenant).map_err(|_| bad())?.hyphenated().to_string())
        }
        _ => Value::Text(tenant.to_owned()),
    })
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

fn scope() -> Scope<'static> {
    Scope { dialect: D, qualifier: "", tenant: TENANT_VAR }
}

async fn set_tenant(conn: &mut MySqlConnection, tenant: &Value) -> Result<(), SliceError> {
    tenant
        .bind(stmt(format!("SET {TENANT_VAR} = ?")))
        .execute(&mut *conn)
        .await
        .map_err(db("set @rewind_tenant"))?;
    Ok(())
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
    sqlx::query(
        "SET time_zone = ?, foreign_key_checks = ?, @rewind_restore = NULL, @rewind_tenant = NULL",
    )
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
    let tenant = tenant_value(plan, tenant)?;
    let src_schema = schema(src).await?;
    let dst_schema = schema(dst).await?;
    check_tables(plan, &src_schema, "source")?;
    check_tables(plan, &dst_schema, "destination")?;

    let src_saved = save(src, "source").await?;
    let dst_saved = save(dst, "destination").await?;
    let result = copy_in_sessions(src, dst, plan, &tenant, &dst_schema).await;
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
    tenant: &Value,
    dst_schema: &Schema,
) -> Result<CopyReport, SliceError> {
    run(src, "SET time_zone = '+00:00'").await?;
    set_tenant(src, tenant).await?;
    run(src, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
    run(dst, "SET time_zone = '+00:00', foreign_key_checks = 0, @rewind_restore = 1").await?;
    set_tenant(dst, tenant).await?;
    run(dst, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
    run(dst, "START TRANSACTION").await?;

    let outside = outside_references(plan, dst_schema);
    let dangling_before = count_outside_dangling(dst, &outside).await?;
    let mut deleted = BTreeMap::new();
    for table in plan.tables.iter().rev() {
        deleted.insert(table.name.as_str(), delete_slice(dst, plan, table).await?);
    }
    let mut report = CopyReport::default();
    for table in &plan.tables {
        let inserted = insert_slice(src, dst, plan, table).await?;
        report.tables.push(TableCopy {
            table: table.name.clone(),
            deleted: deleted.get(table.name.as_str()).copied().unwrap_or(0),
            inserted,
        });
    }
    for table in &plan.tables {
        check_references(dst, plan, table, dst_schema).await?;
    }
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

/// Deletes the destination's slice rows of `table`: their keys are read with the selector
/// (a plain, lock-free read), then deleted by key in batches; a table without a primary key
/// is deleted by the selector.
async fn delete_slice(
    dst: &mut MySqlConnection,
    plan: &SlicePlan,
    table: &SliceTable,
) -> Result<u64, SliceError> {
    let name = D.quote(&table.name);
    let selector = sql::selector(plan, table, scope());
    if table.primary_key.is_empty() {
        let done = stmt(format!("DELETE FROM {name} WHERE {selector}"))
            .execute(&mut *dst)
            .await
            .map_err(db(format!("delete the tenant's rows from `{}`", table.name)))?;
        return Ok(done.rows_affected());
    }
    let key = Columns::key(table);
    let mut keys: Vec<Vec<Value>> = Vec::new();
    let context = format!("read the tenant's keys in `{}`", table.name);
    let mut rows =
        stmt(format!("SELECT {} FROM {name} WHERE {selector}", key.select_list())).fetch(&mut *dst);
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
) -> Result<u64, SliceError> {
    let columns = Columns::new(table.copied());
    if columns.names.is_empty() {
        return Ok(0);
    }
    let name = D.quote(&table.name);
    let select = format!(
        "SELECT {} FROM {name} WHERE {}",
        columns.select_list(),
        sql::selector(plan, table, scope())
    );
    let mut batch = Batch::new(&table.name, &columns);
    let mut rows = stmt(select).fetch(&mut *src);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db(format!("read the tenant's rows of `{}` from the source", table.name)))?
    {
        let values = columns
            .decode(&row)
            .map_err(db(format!("read a row of `{}` from the source", table.name)))?;
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
    dst_schema: &Schema,
) -> Result<(), SliceError> {
    let Some(catalog) = dst_schema.tables.get(&table.name) else { return Ok(()) };
    let selector = sql::selector(plan, table, scope());
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
            "SELECT COUNT(*) FROM {} AS rewind_c WHERE ({selector}) AND {} AND NOT EXISTS \
             (SELECT 1 FROM {} AS rewind_p WHERE {})",
            D.quote(&table.name),
            set.join(" AND "),
            D.quote(&fk.parent),
            join.join(" AND ")
        );
        let missing: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *dst)
            .await
            .map_err(db(format!("check the foreign key `{}` of `{}`", fk.name, table.name)))?;
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
    match digest_in_session(conn, plan, &tenant).await {
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
) -> Result<SliceDigest, SliceError> {
    run(conn, "SET time_zone = '+00:00'").await?;
    set_tenant(conn, tenant).await?;
    run(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
    let mut out = SliceDigest::default();
    for table in &plan.tables {
        let columns = Columns::new(&table.columns);
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            columns.select_list(),
            D.quote(&table.name),
            sql::selector(plan, table, scope())
        );
        let mut hasher = RowHasher::default();
        let mut rows = stmt(sql).fetch(&mut *conn);
        let context = format!("digest the tenant's rows of `{}`", table.name);
        while let Some(row) = rows.try_next().await.map_err(db(&context))? {
            let cells: Vec<Option<Vec<u8>>> =
                columns.decode(&row).map_err(db(&context))?.iter().map(Value::canonical).collect();
            hasher.add_row(cells.iter().map(Option::as_deref));
        }
        drop(rows);
        out.tables.push(hasher.finish(&table.name));
    }
    run(conn, "COMMIT").await?;
    Ok(out)
}
