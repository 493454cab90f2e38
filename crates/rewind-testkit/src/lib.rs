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
