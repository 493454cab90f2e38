//! The SQL a slice is selected by, per dialect. Table and column names come from the catalog
//! and are quoted ([`Dialect::quote`]); the tenant id is never spliced in by this module: the
//! caller passes the SQL fragment that stands for it (`$1`, `?1`, `@rewind_tenant`, or a
//! literal the server quoted).

use crate::plan::{SlicePlan, SliceTable, Via};
use crate::schema::Engine;

/// How identifiers are quoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `"name"` (PostgreSQL and SQLite).
    Ansi,
    /// `` `name` `` (MySQL and MariaDB).
    Backtick,
}

impl From<Engine> for Dialect {
    fn from(e: Engine) -> Self {
        match e {
            Engine::Postgres | Engine::Sqlite => Self::Ansi,
            Engine::Mysql => Self::Backtick,
        }
    }
}

impl Dialect {
    /// `name` quoted, the quote character doubled inside.
    pub fn quote(self, name: &str) -> String {
        match self {
            Self::Ansi => format!("\"{}\"", name.replace('"', "\"\"")),
            Self::Backtick => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// `a, b, c`, each quoted.
    pub fn list<'a>(self, names: impl IntoIterator<Item = &'a str>) -> String {
        names.into_iter().map(|n| self.quote(n)).collect::<Vec<_>>().join(", ")
    }
}

/// Where the tables of a selector live and what stands for the tenant id.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub dialect: Dialect,
    /// Prepended to every table name, already quoted, with its dot (`rw_source.`), or `""`.
    pub qualifier: &'a str,
    /// The SQL that stands for the tenant id (`$1`, `?1`, `@rewind_tenant`, a quoted literal).
    pub tenant: &'a str,
}

impl Scope<'_> {
    /// `table` quoted and qualified.
    pub fn table(&self, table: &str) -> String {
        format!("{}{}", self.qualifier, self.dialect.quote(table))
    }
}

/// The condition (without `WHERE`) that holds for exactly the rows of `table` in the tenant's
/// slice, its columns unqualified: parents are reached by nested `IN (SELECT …)`.
///
/// # Panics
/// Never on a plan made by [`crate::plan::plan`]: every [`Via::Parent`] names a planned table,
/// and the vias form no cycle (a parent is nearer the root or outside the table's reference
/// cycle), so the recursion ends.
pub fn selector(plan: &SlicePlan, table: &SliceTable, scope: Scope<'_>) -> String {
    let q = |c: &str| scope.dialect.quote(c);
    let mut alternatives = Vec::new();
    // Conditions that every earlier via was not set.
    let mut earlier_unset: Vec<String> = Vec::new();
    for via in &table.via {
        let (set, test, always_set) = match via {
            Via::Root { column } | Via::TenantColumn { column } => (
                format!("{} IS NOT NULL", q(column)),
                format!("{} = {}", q(column), scope.tenant),
                true,
            ),
            Via::Parent { columns, parent, parent_columns, nullable, .. } => {
                let parent_table = plan.table(parent).unwrap_or_else(|| {
                    panic!("plan names parent `{parent}` of `{}` but does not plan it", table.name)
                });
                let inner = selector(plan, parent_table, scope);
                let lhs = if columns.len() == 1 {
                    q(&columns[0])
                } else {
                    format!("({})", scope.dialect.list(columns.iter().map(String::as_str)))
                };
                let test = format!(
                    "{lhs} IN (SELECT {} FROM {} WHERE {inner})",
                    scope.dialect.list(parent_columns.iter().map(String::as_str)),
                    scope.table(parent)
                );
                let set =
                    columns.iter().map(|c| format!("{} IS NOT NULL", q(c))).collect::<Vec<_>>();
                (set.join(" AND "), test, !nullable)
            }
        };
        let mut parts = earlier_unset.clone();
        parts.push(test);
        alternatives.push(parts.join(" AND "));
        if always_set {
            break;
        }
        earlier_unset.push(format!("NOT ({set})"));
    }
    match alternatives.len() {
        0 => "1 = 0".to_owned(),
        1 => alternatives.remove(0),
        _ => alternatives.into_iter().map(|a| format!("({a})")).collect::<Vec<_>>().join(" OR "),
    }
}
