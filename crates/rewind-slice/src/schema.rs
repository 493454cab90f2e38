//! What a catalog says about the tables a slice can reach: read by each engine's `schema()`
//! ([`crate::pg::schema`], [`crate::mysql::schema`], [`crate::sqlite::schema`]) from
//! `pg_catalog`, `information_schema` and `pragma_*`, for the connection's current schema
//! (PostgreSQL `current_schema()`, MySQL `DATABASE()`, SQLite `main`).

use std::collections::BTreeMap;

use serde::Serialize;

/// The database engine a schema was read from; decides the SQL dialect and which reference
/// cycles can be written (see [`Engine::defers_every_reference`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
}

impl Engine {
    /// Whether a copy on this engine can leave every foreign key unchecked until its
    /// transaction ends, so that no reference cycle needs breaking: SQLite
    /// (`PRAGMA defer_foreign_keys`) and MySQL (`foreign_key_checks = 0`, with rewind's own
    /// reference check before commit). PostgreSQL defers only constraints declared
    /// `DEFERRABLE` (or skips all in `session_replication_role = replica`, which needs a
    /// privilege the plan cannot know of): the plan breaks its cycles.
    pub fn defers_every_reference(self) -> bool {
        matches!(self, Self::Sqlite | Self::Mysql)
    }

    /// The engine's name as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Mysql => "MariaDB/MySQL",
            Self::Sqlite => "SQLite",
        }
    }
}

/// The tables of one schema, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schema {
    pub engine: Engine,
    pub tables: BTreeMap<String, Table>,
}

/// One table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Table {
    pub name: String,
    /// In the table's column order.
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    /// Foreign keys this table declares (it is the child).
    pub foreign_keys: Vec<ForeignKey>,
    /// User triggers on the table (not the engine's internal ones), by name.
    pub triggers: Vec<String>,
}

impl Table {
    /// A table with nothing read yet: columns, keys and triggers are filled in as the catalog
    /// gives them.
    pub fn named(name: String) -> Self {
        Self {
            name,
            columns: Vec::new(),
            primary_key: Vec::new(),
            foreign_keys: Vec::new(),
            triggers: Vec::new(),
        }
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// The type as the catalog writes it: PostgreSQL `format_type()` (`uuid`, `bigint`,
    /// `text[]`, `timestamp with time zone`), MySQL `COLUMN_TYPE` (`bigint(20) unsigned`,
    /// `varbinary(16)`), SQLite the declared type (may be empty).
    pub data_type: String,
    pub nullable: bool,
    /// Computed by the engine (`GENERATED ALWAYS AS (…) STORED`/`VIRTUAL`): never copied, the
    /// destination recomputes it; still digested.
    pub generated: bool,
    /// PostgreSQL: the sequence that feeds the column (identity or serial) in this catalog,
    /// qualified and quoted as `pg_get_serial_sequence` gives it. A copy advances the
    /// destination's own sequence of the column (read from the destination at copy time) past
    /// the largest restored value. MySQL `AUTO_INCREMENT` and SQLite rowids advance by
    /// themselves: `None`.
    pub sequence: Option<String>,
}

/// A foreign key: `columns` of the child reference `parent_columns` of `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignKey {
    /// The constraint's name (SQLite: `fk<id>`, as it has none; a declared reference:
    /// `declared:child(columns)->parent(columns)`).
    pub name: String,
    pub columns: Vec<String>,
    pub parent: String,
    pub parent_columns: Vec<String>,
    /// PostgreSQL `DEFERRABLE` (initially deferred or not); SQLite `DEFERRABLE INITIALLY
    /// DEFERRED`. MySQL: never.
    pub deferrable: bool,
    /// A reference the workflow declares (`references`, added by [`crate::plan::declare`]),
    /// not a constraint of the catalog: it counts for discovery, order and remap, and is
    /// never checked, deferred or set after the inserts. `false` for every key a catalog gives.
    pub declared: bool,
}
