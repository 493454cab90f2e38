//! Test support: every test gets its own database. SQLite: a file in a fresh temporary folder.
//! PostgreSQL: a fresh schema on the server named by `REWIND_TEST_POSTGRES`, dropped afterwards.
//!
//! Tests only; never a dependency of a shipped crate.

use std::path::PathBuf;

use sqlx::Connection;

/// The PostgreSQL URL tests run against, or `None` (and a note on stderr) when
/// `REWIND_TEST_POSTGRES` is unset. `.ci/run` always sets it.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("REWIND_TEST_POSTGRES") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("note: {test}: REWIND_TEST_POSTGRES is unset; skipping the PostgreSQL case");
            None
        }
    }
}

/// A SQLite checkpoint store URL in a fresh temporary folder (removed on drop).
pub struct SqliteDb {
    /// The folder, kept alive as long as the value.
    pub dir: tempfile::TempDir,
    /// `sqlite://<dir>/rewind.db`
    pub url: String,
}

impl SqliteDb {
    /// A new, empty location.
    ///
    /// # Panics
    /// If no temporary folder can be made.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("rewind.db").display());
        Self { dir, url }
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("rewind.db")
    }
}

impl Default for SqliteDb {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh PostgreSQL schema; its URL selects it through `search_path`.
pub struct PgSchema {
    base: String,
    /// Schema name.
    pub name: String,
    /// URL whose connections use the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates a schema with a unique name on the server at `base`.
    ///
    /// # Panics
    /// If the server cannot be reached: `REWIND_TEST_POSTGRES` promised one.
    pub async fn create(base: &str) -> Self {
        let name = format!("rewind_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            sqlx::PgConnection::connect(base).await.expect("PostgreSQL at REWIND_TEST_POSTGRES");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={name}");
        Self { base: base.to_owned(), name, url }
    }

    /// Drops the schema and everything in it.
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn drop_schema(self) {
        let mut conn = sqlx::PgConnection::connect(&self.base)
            .await
            .expect("PostgreSQL at REWIND_TEST_POSTGRES");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&mut conn)
            .await
            .expect("drop the test schema");
    }
}

/// The MariaDB/MySQL URL tests run against, or `None` (and a note on stderr) when
/// `REWIND_TEST_MARIADB` is unset. `.ci/run` always sets it.
pub fn mariadb_url(test: &str) -> Option<String> {
    match std::env::var("REWIND_TEST_MARIADB") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("note: {test}: REWIND_TEST_MARIADB is unset; skipping the MariaDB case");
            None
        }
    }
}

/// A fresh MariaDB/MySQL database on the server at `REWIND_TEST_MARIADB`; its URL names it.
pub struct MyDb {
    base: String,
    /// Database name.
    pub name: String,
    /// URL of the database.
    pub url: String,
}

impl MyDb {
    /// Creates a database with a unique name on the server at `base` (a `mysql://` URL; its
    /// own database part is replaced).
    ///
    /// # Panics
    /// If the server cannot be reached: `REWIND_TEST_MARIADB` promised one.
    pub async fn create(base: &str) -> Self {
        let name = format!("rewind_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            sqlx::MySqlConnection::connect(base).await.expect("MariaDB at REWIND_TEST_MARIADB");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        Self { base: base.to_owned(), url: with_database(base, &name), name }
    }

    /// Drops the database and everything in it.
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn drop_database(self) {
        let mut conn = sqlx::MySqlConnection::connect(&self.base)
            .await
            .expect("MariaDB at REWIND_TEST_MARIADB");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {}", self.name)))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        let _ = conn.close().await;
    }
}

/// `mysql://user@host:port/NAME?query`: `base` with its database replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let host_end = head[scheme_end..].find('/').map_or(head.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &head[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// A fresh PostgreSQL database (not a schema) on the server at `base`, for tests that need a
/// whole database (a second "server" for a copy, catalogs of `current_schema()` = `public`).
pub struct PgDatabase {
    base: String,
    /// Database name.
    pub name: String,
    /// URL of the database.
    pub url: String,
}

impl PgDatabase {
    /// Creates a database with a unique name.
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn create(base: &str) -> Self {
        let name = format!("rewind_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            sqlx::PgConnection::connect(base).await.expect("PostgreSQL at REWIND_TEST_POSTGRES");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        Self { base: base.to_owned(), url: with_database(base, &name), name }
    }

    /// Drops the database (`WITH (FORCE)`: connections a failed test left are closed).
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn drop_database(self) {
        let mut conn = sqlx::PgConnection::connect(&self.base)
            .await
            .expect("PostgreSQL at REWIND_TEST_POSTGRES");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
        let _ = conn.close().await;
    }
}

/// Drops every schema on the PostgreSQL server at `url` whose name starts with `{prefix}_`:
/// the schemas of a sandbox made with `rewind sandbox init --postgres` (its manifest's
/// `schema_prefix`), live stores and scratch copies alike. Best effort: a test's cleanup.
pub async fn drop_schemas_with_prefix(url: &str, prefix: &str) {
    let Ok(mut c) = sqlx::PgConnection::connect(url).await else { return };
    let names: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace")
        .fetch_all(&mut c)
        .await
        .unwrap_or_default();
    for n in names.iter().filter(|n| n.starts_with(&format!("{prefix}_"))) {
        let sql = format!("DROP SCHEMA \"{n}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_replaces_the_urls_own() {
        assert_eq!(
            super::with_database("mysql://root@127.0.0.1:3306/test", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            super::with_database("mysql://root@h/test?ssl-mode=disabled", "x"),
            "mysql://root@h/x?ssl-mode=disabled"
        );
        assert_eq!(super::with_database("mysql://root@h", "x"), "mysql://root@h/x");
    }
}
