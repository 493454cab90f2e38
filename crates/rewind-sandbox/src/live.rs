//! Writing and reading relational stores, SQLite or PostgreSQL: used by the system that
//! generates activity (live stores) and by point-in-time restore (scratch copies). The verifier
//! does not use this module: it reads stores with its own queries.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rewind_model::redact_url;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};

use crate::error::{DbContext, Error, Result};
use crate::schema::{ColType, StoreKind, Table};
use crate::value::{Row, Val};

/// Pending writes to one store: per table (by index), the new row of each id, or `None` to
/// delete it. Ids are independent (no constraint spans two rows), so a batch of writes can be
/// applied in any order once collapsed to the last write of each id.
pub(crate) type Batch = Vec<BTreeMap<String, Option<Row>>>;

/// An empty batch for a kind of store.
pub(crate) fn empty_batch(kind: StoreKind) -> Batch {
    kind.tables().iter().map(|_| BTreeMap::new()).collect()
}

/// A relational store: a SQLite file, a schema on a PostgreSQL server, or a database on a
/// MariaDB server.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite { pool: SqlitePool, what: String },
    Postgres { pool: PgPool, schema: String },
    Mysql { pool: MySqlPool, database: String },
}

/// How a SQLite file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SqliteMode {
    /// A live store: WAL, created if missing.
    Live,
    /// A scratch copy being loaded: no journal, no fsync until closed.
    Scratch,
}

pub(crate) async fn open_sqlite(path: &Path, mode: SqliteMode) -> Result<Db> {
    let what = path.display().to_string();
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(30));
    let opts = match mode {
        SqliteMode::Live => {
            opts.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal)
        }
        SqliteMode::Scratch => {
            opts.journal_mode(SqliteJournalMode::Delete).synchronous(SqliteSynchronous::Off)
        }
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .ctx(|| format!("opening SQLite store `{what}`"))?;
    Ok(Db::Sqlite { pool, what })
}

/// Connects to a PostgreSQL server. Commits are asynchronous (`synchronous_commit = off`): the
/// sandbox's writer and scratch loads trade the durability of the last few commits before a
/// crash for not waiting on a WAL flush at each of hundreds of commits; nothing can be corrupted.
pub(crate) async fn pg_pool(url: &str) -> Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| Error::refused(format!("--postgres `{}`: {e}", redact_url(url))))?
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(opts)
        .await
        .ctx(|| format!("connecting to PostgreSQL at `{}`", redact_url(url)))
}

/// Connects to a MariaDB (or MySQL) server's database.
pub(crate) async fn mysql_pool(url: &str) -> Result<MySqlPool> {
    let opts = MySqlConnectOptions::from_str(url)
        .map_err(|e| Error::refused(format!("`{}`: {e}", redact_url(url))))?;
    MySqlPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(opts)
        .await
        .ctx(|| format!("connecting to MariaDB at `{}`", redact_url(url)))
}

/// True for names usable as PostgreSQL schema names without quoting surprises.
pub fn is_plain_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// The SQL dialect of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    fn quote(self, ident: &str) -> String {
        match self {
            Dialect::Mysql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }
}

fn col_sql(t: ColType, d: Dialect, col: usize) -> &'static str {
    match (t, d) {
        // MariaDB indexes no TEXT column without a prefix length: the key columns (`id`,
        // `site_id`) are VARCHAR there, compared byte for byte like everywhere else.
        (ColType::Text, Dialect::Mysql) if col < 2 => {
            "VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
        }
        (ColType::Text, Dialect::Mysql) => {
            "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
        }
        (ColType::Text, _) => "TEXT NOT NULL",
        (ColType::Int, Dialect::Sqlite) => "INTEGER NOT NULL",
        (ColType::Int, _) => "BIGINT NOT NULL",
    }
}

fn create_table_sql(table: &Table, qualified: &str, d: Dialect) -> String {
    let cols: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            let pk = if i == 0 { " PRIMARY KEY" } else { "" };
            format!("{} {}{pk}", d.quote(name), col_sql(*ty, d, i))
        })
        .collect();
    format!("CREATE TABLE {qualified} ({})", cols.join(", "))
}

fn column_list_in(table: &Table, d: Dialect) -> String {
    table.columns.iter().map(|(n, _)| d.quote(n)).collect::<Vec<_>>().join(", ")
}

fn column_list(table: &Table) -> String {
    column_list_in(table, Dialect::Postgres)
}

impl Db {
    /// `"table"` (SQLite), `"schema"."table"` (PostgreSQL) or `` `database`.`table` ``.
    fn qualified(&self, table: &str) -> String {
        match self {
            Db::Sqlite { .. } => format!("\"{table}\""),
            Db::Postgres { schema, .. } => format!("\"{schema}\".\"{table}\""),
            Db::Mysql { database, .. } => format!("`{database}`.`{table}`"),
        }
    }

    fn what(&self) -> &str {
        match self {
            Db::Sqlite { what, .. } => what,
            Db::Postgres { schema, .. } => schema,
            Db::Mysql { database, .. } => database,
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite { .. } => Dialect::Sqlite,
            Db::Postgres { .. } => Dialect::Postgres,
            Db::Mysql { .. } => Dialect::Mysql,
        }
    }

    /// Creates the schema (PostgreSQL; nothing for SQLite), with its comment if given, in one
    /// transaction: the schema never exists without its comment.
    pub(crate) async fn create_schema(&self, comment: Option<&str>) -> Result<()> {
        if let Db::Mysql { database, .. } = self {
            return self
                .exec(&format!(
                    "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                ))
                .await;
        }
        let Db::Postgres { pool, schema } = self else { return Ok(()) };
        let ctx = || format!("creating schema `{schema}`");
        let mut tx = pool.begin().await.ctx(ctx)?;
        let mut ddl = vec![format!("CREATE SCHEMA \"{schema}\"")];
        if let Some(c) = comment {
            ddl.push(format!("COMMENT ON SCHEMA \"{schema}\" IS '{}'", c.replace('\'', "''")));
        }
        for sql in ddl {
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await.ctx(ctx)?;
        }
        tx.commit().await.ctx(ctx)
    }

    /// Creates the tables of `kind`, without indexes (the schema must exist:
    /// [`Db::create_schema`]).
    pub(crate) async fn create_tables(&self, kind: StoreKind) -> Result<()> {
        let ddl: Vec<String> = kind
            .tables()
            .iter()
            .map(|t| create_table_sql(t, &self.qualified(t.name), self.dialect()))
            .collect();
        self.exec_all(&ddl, "creating tables").await
    }

    /// Creates the `site_id` index of every table of `kind`.
    pub(crate) async fn create_indexes(&self, kind: StoreKind) -> Result<()> {
        let ddl: Vec<String> = kind
            .tables()
            .iter()
            .map(|t| {
                let q = self.qualified(t.name);
                let d = self.dialect();
                let (index, col) = (d.quote(&format!("{}_site_id", t.name)), d.quote("site_id"));
                format!("CREATE INDEX {index} ON {q} ({col})")
            })
            .collect();
        self.exec_all(&ddl, "creating indexes").await
    }

    /// Creates the table describing a scratch copy, `rewind_meta(key TEXT PRIMARY KEY, value
    /// TEXT NOT NULL)`, holding `rows`.
    pub(crate) async fn write_meta(&self, rows: &[(&str, &str)]) -> Result<()> {
        let q = self.qualified(crate::scratch::META_TABLE);
        let d = self.dialect();
        let key_type = if d == Dialect::Mysql { "VARCHAR(100)" } else { "TEXT" };
        self.exec(&format!(
            "CREATE TABLE {q} ({} {key_type} NOT NULL PRIMARY KEY, {} TEXT NOT NULL)",
            d.quote("key"),
            d.quote("value")
        ))
        .await?;
        let ctx = || format!("describing scratch copy `{}`", self.what());
        for (key, value) in rows {
            match self {
                Db::Sqlite { pool, .. } => {
                    let sql = format!("INSERT INTO {q} (\"key\", \"value\") VALUES (?, ?)");
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(*key)
                        .bind(*value)
                        .execute(pool)
                        .await
                        .map(|_| ())
                }
                Db::Postgres { pool, .. } => {
                    let sql = format!("INSERT INTO {q} (\"key\", \"value\") VALUES ($1, $2)");
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(*key)
                        .bind(*value)
                        .execute(pool)
                        .await
                        .map(|_| ())
                }
                Db::Mysql { pool, .. } => {
                    let sql = format!("INSERT INTO {q} (`key`, `value`) VALUES (?, ?)");
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(*key)
                        .bind(*value)
                        .execute(pool)
                        .await
                        .map(|_| ())
                }
            }
            .ctx(ctx)?;
        }
        Ok(())
    }

    /// Runs one statement.
    pub(crate) async fn exec(&self, sql: &str) -> Result<()> {
        self.exec_all(&[sql.to_owned()], "running").await
    }

    async fn exec_all(&self, statements: &[String], doing: &str) -> Result<()> {
        for sql in statements {
            let text = || AssertSqlSafe(sql.clone());
            match self {
                Db::Sqlite { pool, .. } => sqlx::query(text()).execute(pool).await.map(|_| ()),
                Db::Postgres { pool, .. } => sqlx::query(text()).execute(pool).await.map(|_| ()),
                Db::Mysql { pool, .. } => sqlx::query(text()).execute(pool).await.map(|_| ()),
            }
            .ctx(|| format!("{doing} in `{}`: {sql}", self.what()))?;
        }
        Ok(())
    }

    /// Applies a batch of writes in one transaction.
    pub(crate) async fn write(&self, kind: StoreKind, batch: &Batch) -> Result<()> {
        let ctx = || format!("writing to `{}`", self.what());
        match self {
            Db::Sqlite { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                for (table, writes) in kind.tables().iter().zip(batch) {
                    if writes.is_empty() {
                        continue;
                    }
                    let q = self.qualified(table.name);
                    let ids: Vec<&String> = writes.keys().collect();
                    for chunk in ids.chunks(SQLITE_CHUNK) {
                        let marks = vec!["?"; chunk.len()].join(", ");
                        let sql = format!("DELETE FROM {q} WHERE \"id\" IN ({marks})");
                        let mut query = sqlx::query(AssertSqlSafe(sql));
                        for id in chunk {
                            query = query.bind(id.as_str());
                        }
                        query.execute(&mut *tx).await.ctx(ctx)?;
                    }
                    sqlite_insert(&mut tx, table, &q, writes.values().flatten()).await.ctx(ctx)?;
                }
                tx.commit().await.ctx(ctx)
            }
            Db::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                for (table, writes) in kind.tables().iter().zip(batch) {
                    if writes.is_empty() {
                        continue;
                    }
                    let q = self.qualified(table.name);
                    let ids: Vec<&str> = writes.keys().map(String::as_str).collect();
                    sqlx::query(AssertSqlSafe(format!("DELETE FROM {q} WHERE \"id\" = ANY($1)")))
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await
                        .ctx(ctx)?;
                    let rows: Vec<&Row> = writes.values().flatten().collect();
                    if !rows.is_empty() {
                        insert_rows(&mut tx, table, &q, rows.into_iter()).await.ctx(ctx)?;
                    }
                }
                tx.commit().await.ctx(ctx)
            }
            Db::Mysql { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                for (table, writes) in kind.tables().iter().zip(batch) {
                    if writes.is_empty() {
                        continue;
                    }
                    let q = self.qualified(table.name);
                    let ids: Vec<&String> = writes.keys().collect();
                    for chunk in ids.chunks(SQLITE_CHUNK) {
                        let marks = vec!["?"; chunk.len()].join(", ");
                        let sql = format!("DELETE FROM {q} WHERE `id` IN ({marks})");
                        let mut query = sqlx::query(AssertSqlSafe(sql));
                        for id in chunk {
                            query = query.bind(id.as_str());
                        }
                        query.execute(&mut *tx).await.ctx(ctx)?;
                    }
                    mysql_insert(&mut tx, table, &q, writes.values().flatten()).await.ctx(ctx)?;
                }
                tx.commit().await.ctx(ctx)
            }
        }
    }

    /// Inserts rows into an empty table: the bulk load of a scratch copy.
    pub(crate) async fn load<'a>(
        &self,
        table: &Table,
        rows: impl Iterator<Item = &'a Row>,
    ) -> Result<u64> {
        let ctx = || format!("loading `{}` into `{}`", table.name, self.what());
        let q = self.qualified(table.name);
        match self {
            Db::Sqlite { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                let n = sqlite_insert(&mut tx, table, &q, rows).await.ctx(ctx)?;
                tx.commit().await.ctx(ctx)?;
                Ok(n)
            }
            Db::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                let n = insert_rows(&mut tx, table, &q, rows).await.ctx(ctx)?;
                tx.commit().await.ctx(ctx)?;
                Ok(n)
            }
            Db::Mysql { pool, .. } => {
                let mut tx = pool.begin().await.ctx(ctx)?;
                let n = mysql_insert(&mut tx, table, &q, rows).await.ctx(ctx)?;
                tx.commit().await.ctx(ctx)?;
                Ok(n)
            }
        }
    }

    /// Every row of a table, sorted by id.
    pub(crate) async fn read_all(&self, table: &Table) -> Result<Vec<Row>> {
        let sql = format!(
            "SELECT {} FROM {}",
            column_list_in(table, self.dialect()),
            self.qualified(table.name)
        );
        let ctx = || format!("reading `{}` of `{}`", table.name, self.what());
        let mut out: Vec<Row> = match self {
            Db::Sqlite { pool, .. } => {
                let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await.ctx(ctx)?;
                rows.iter().map(|r| decode_row(r, table)).collect::<Result<_, _>>().ctx(ctx)?
            }
            Db::Postgres { pool, .. } => {
                let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await.ctx(ctx)?;
                rows.iter().map(|r| decode_row(r, table)).collect::<Result<_, _>>().ctx(ctx)?
            }
            Db::Mysql { pool, .. } => {
                let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await.ctx(ctx)?;
                rows.iter().map(|r| decode_row(r, table)).collect::<Result<_, _>>().ctx(ctx)?
            }
        };
        out.sort_by(|a, b| a[0].cmp(&b[0]));
        Ok(out)
    }

    /// True when the store has a table of that name (one the sandbox did not create, such as
    /// the `rewind_key_map` a restore as a new tenant writes).
    pub(crate) async fn has_table(&self, name: &str) -> Result<bool> {
        let ctx = || format!("looking for table `{name}` in `{}`", self.what());
        let n: i64 = match self {
            Db::Sqlite { pool, .. } => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                )
                .bind(name)
                .fetch_one(pool)
                .await
            }
            Db::Postgres { pool, schema } => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
                     AND table_name = $2",
                )
                .bind(schema)
                .bind(name)
                .fetch_one(pool)
                .await
            }
            Db::Mysql { pool, database } => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? \
                     AND table_name = ?",
                )
                .bind(database)
                .bind(name)
                .fetch_one(pool)
                .await
            }
        }
        .ctx(ctx)?;
        Ok(n > 0)
    }

    /// Rows of `table` whose `column` is `value`, and (with `and_empty`) whose column
    /// `and_empty` is the empty string.
    pub(crate) async fn count_where(
        &self,
        table: &str,
        column: &str,
        value: &str,
        and_empty: Option<&str>,
    ) -> Result<u64> {
        let d = self.dialect();
        let mark = if d == Dialect::Postgres { "$1" } else { "?" };
        let mut sql = format!(
            "SELECT count(*) FROM {} WHERE {} = {mark}",
            self.qualified(table),
            d.quote(column)
        );
        if let Some(c) = and_empty {
            sql.push_str(&format!(" AND {} = ''", d.quote(c)));
        }
        let ctx = || format!("counting `{table}` rows of {value} in `{}`", self.what());
        let n: i64 = match self {
            Db::Sqlite { pool, .. } => {
                sqlx::query_scalar(AssertSqlSafe(sql)).bind(value).fetch_one(pool).await
            }
            Db::Postgres { pool, .. } => {
                sqlx::query_scalar(AssertSqlSafe(sql)).bind(value).fetch_one(pool).await
            }
            Db::Mysql { pool, .. } => {
                sqlx::query_scalar(AssertSqlSafe(sql)).bind(value).fetch_one(pool).await
            }
        }
        .ctx(ctx)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes, in one transaction, every row of `site` from the tables of `kind` (`site_id =
    /// site`) and from `extra` tables by their own column (`rewind_key_map`'s `new_tenant`);
    /// returns the rows deleted per table, tables without any left out.
    pub(crate) async fn delete_site(
        &self,
        kind: StoreKind,
        site: &str,
        extra: &[(&str, &str)],
    ) -> Result<Vec<(String, u64)>> {
        let d = self.dialect();
        let mark = if d == Dialect::Postgres { "$1" } else { "?" };
        let mut targets: Vec<(String, String)> =
            kind.tables().iter().map(|t| (t.name.to_owned(), "site_id".to_owned())).collect();
        targets.extend(extra.iter().map(|(t, c)| ((*t).to_owned(), (*c).to_owned())));
        let ctx = || format!("removing site {site} from `{}`", self.what());
        let mut out = Vec::new();
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.ctx(ctx)?;
                for (table, column) in &targets {
                    let sql = format!(
                        "DELETE FROM {} WHERE {} = {mark}",
                        self.qualified(table),
                        d.quote(column)
                    );
                    let n = sqlx::query(AssertSqlSafe(sql))
                        .bind(site)
                        .execute(&mut *tx)
                        .await
                        .ctx(ctx)?
                        .rows_affected();
                    if n > 0 {
                        out.push((table.clone(), n));
                    }
                }
                tx.commit().await.ctx(ctx)?;
            }};
        }
        match self {
            Db::Sqlite { pool, .. } => run!(pool),
            Db::Postgres { pool, .. } => run!(pool),
            Db::Mysql { pool, .. } => run!(pool),
        }
        Ok(out)
    }

    /// Closes the connections (a SQLite scratch file is complete on disk afterwards).
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite { pool, .. } => pool.close().await,
            Db::Mysql { pool, .. } => pool.close().await,
            Db::Postgres { .. } => {}
        }
    }
}

/// One row of `table`, in column order.
fn decode_row<R>(r: &R, table: &Table) -> std::result::Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut row = Vec::with_capacity(table.columns.len());
    for (i, (_, ty)) in table.columns.iter().enumerate() {
        row.push(match ty {
            ColType::Int => Val::Int(r.try_get::<i64, _>(i)?),
            ColType::Text => Val::Text(r.try_get::<String, _>(i)?),
        });
    }
    Ok(row)
}

/// Rows per statement into SQLite (its default limit is 32,766 bound values).
const SQLITE_CHUNK: usize = 500;

/// Inserts rows into a SQLite table, [`SQLITE_CHUNK`] rows per statement.
async fn sqlite_insert<'a>(
    conn: &mut sqlx::SqliteConnection,
    table: &Table,
    qualified: &str,
    rows: impl Iterator<Item = &'a Row>,
) -> std::result::Result<u64, sqlx::Error> {
    let one = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let mut n = 0u64;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<&Row> = rows.by_ref().take(SQLITE_CHUNK).collect();
        let sql = format!(
            "INSERT INTO {qualified} ({}) VALUES {}",
            column_list(table),
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            for v in row {
                query = match v {
                    Val::Int(i) => query.bind(*i),
                    Val::Text(s) => query.bind(s.as_str()),
                };
            }
        }
        n += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// Inserts rows into a MariaDB table, [`SQLITE_CHUNK`] rows per statement.
async fn mysql_insert<'a>(
    conn: &mut sqlx::MySqlConnection,
    table: &Table,
    qualified: &str,
    rows: impl Iterator<Item = &'a Row>,
) -> std::result::Result<u64, sqlx::Error> {
    let one = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let mut n = 0u64;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<&Row> = rows.by_ref().take(SQLITE_CHUNK).collect();
        let sql = format!(
            "INSERT INTO {qualified} ({}) VALUES {}",
            column_list_in(table, Dialect::Mysql),
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            for v in row {
                query = match v {
                    Val::Int(i) => query.bind(*i),
                    Val::Text(s) => query.bind(s.as_str()),
                };
            }
        }
        n += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// Rows per INSERT statement into PostgreSQL.
const PG_CHUNK: usize = 5_000;

/// Inserts rows into a PostgreSQL table, [`PG_CHUNK`] rows per statement, each column bound as
/// one array (`INSERT ... SELECT * FROM UNNEST($1::text[], $2::bigint[], ...)`). (COPY is no
/// faster here: each COPY waits out a delayed acknowledgement of its final message.)
async fn insert_rows<'a>(
    conn: &mut sqlx::PgConnection,
    table: &Table,
    qualified: &str,
    rows: impl Iterator<Item = &'a Row>,
) -> std::result::Result<u64, sqlx::Error> {
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| match ty {
            ColType::Text => format!("${}::text[]", i + 1),
            ColType::Int => format!("${}::bigint[]", i + 1),
        })
        .collect();
    let sql = format!(
        "INSERT INTO {qualified} ({}) SELECT * FROM UNNEST({})",
        column_list(table),
        arrays.join(", ")
    );
    let mut n = 0u64;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<&Row> = rows.by_ref().take(PG_CHUNK).collect();
        let mut query = sqlx::query(AssertSqlSafe(sql.clone()));
        for (i, (_, ty)) in table.columns.iter().enumerate() {
            query = match ty {
                ColType::Text => query.bind(
                    chunk
                        .iter()
                        .map(|r| r[i].as_text().unwrap_or_default().to_owned())
                        .collect::<Vec<String>>(),
                ),
                ColType::Int => query.bind(
                    chunk.iter().map(|r| r[i].as_int().unwrap_or_default()).collect::<Vec<i64>>(),
                ),
            };
        }
        n += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MariaDB backing writes, overwrites, deletes and reads back rows as the others do
    /// (on `REWIND_TEST_MARIADB`'s server, in a database of its own, dropped at the end).
    #[tokio::test]
    async fn mariadb_backing_round_trips_a_batch() {
        let Some(url) = std::env::var("REWIND_TEST_MARIADB").ok().filter(|u| !u.is_empty()) else {
            eprintln!("note: REWIND_TEST_MARIADB is not set; skipping the MariaDB backing test");
            return;
        };
        let pool = mysql_pool(&url).await.expect("the test server");
        let database = format!("rwsb_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let db = Db::Mysql { pool: pool.clone(), database: database.clone() };
        let kind = StoreKind::Tracker;
        let result = async {
            db.create_schema(None).await?;
            db.create_tables(kind).await?;
            db.create_indexes(kind).await?;
            let table = &kind.tables()[0]; // projects(id, site_id, key, name, updated_at)
            let row = |id: &str, name: &str| -> Row {
                [id, "site-1", "KEY", name, "2022-04-05T07:33:00Z"]
                    .iter()
                    .map(|v| Val::Text((*v).to_owned()))
                    .collect()
            };
            let mut batch = empty_batch(kind);
            batch[0].insert("p1".into(), Some(row("p1", "first")));
            batch[0].insert("p2".into(), Some(row("p2", "second")));
            batch[0].insert("p3".into(), Some(row("p3", "emoji \u{1F600} and 'quotes'")));
            db.write(kind, &batch).await?;
            let mut batch = empty_batch(kind);
            batch[0].insert("p1".into(), Some(row("p1", "renamed")));
            batch[0].insert("p2".into(), None);
            db.write(kind, &batch).await?;
            db.read_all(table).await
        }
        .await;
        let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{database}`")))
            .execute(&pool)
            .await;
        let rows = result.expect("write and read back");
        assert_eq!(rows.len(), 2, "p2 deleted: {rows:?}");
        assert_eq!(rows[0][0], Val::Text("p1".into()));
        assert_eq!(rows[0][3], Val::Text("renamed".into()));
        assert_eq!(rows[1][3], Val::Text("emoji \u{1F600} and 'quotes'".into()));
    }

    #[test]
    fn checks_identifiers() {
        assert!(is_plain_ident("scratch_tracker_s01"));
        assert!(!is_plain_ident("Scratch"));
        assert!(!is_plain_ident("a;drop"));
        assert!(!is_plain_ident(""));
    }
}
