//! A tenant's slice of a relational store, and the three engines that copy and digest it.
//!
//! A *slice* is the root table's row whose primary key is the tenant id, and every row of every
//! table that reaches that row through foreign keys, transitively; plus, optionally, tables that
//! carry the tenant id in a column without a foreign key (`tenant_column`).
//!
//! - [`schema`]: what the catalog says (tables, columns and their types, primary keys, foreign
//!   keys, triggers), read by each engine's `schema()` ([`pg`], [`mysql`], [`sqlite`]).
//! - [`plan`]: from a [`schema::Schema`] and a [`plan::Request`], the [`plan::SlicePlan`]: which
//!   tables, by which path each reaches the root, in which order to delete and insert, and how
//!   reference cycles are broken. Pure: no I/O.
//! - [`sql`]: the `WHERE` clause that selects a table's slice, per SQL dialect.
//! - [`pg`], [`mysql`], [`sqlite`]: copy a slice from a source to a destination in one
//!   destination transaction, and digest a slice (row count and order-independent hash per table).
//! - [`error`]: [`SliceError`], and how a database error is described and judged (transient or
//!   not).

pub mod error;
pub mod mysql;
pub mod pg;
pub mod plan;
pub mod remap;
pub mod schema;
pub mod sql;
pub mod sqlite;

pub use error::SliceError;
pub use plan::{Request, SlicePlan, SliceTable, Via};
pub use remap::RemapPlan;
pub use schema::{Column, Engine, ForeignKey, Schema, Table};

/// What a copy did, per table in insert order: rows deleted from the destination and rows
/// inserted from the source.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub tables: Vec<TableCopy>,
}

/// One table of a [`CopyReport`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableCopy {
    pub table: String,
    pub deleted: u64,
    pub inserted: u64,
}

/// A slice's digest: per table (in the plan's order), the row count and an order-independent
/// digest of the rows (the wrapping sum of the first 16 bytes of each row's SHA-256 over its
/// cells; NULL distinct from every value). Two digests of the same plan on the same engine are
/// equal when the rows are.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SliceDigest {
    pub tables: Vec<TableDigest>,
}

/// One table of a [`SliceDigest`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableDigest {
    pub table: String,
    pub rows: u64,
    /// 32 hex digits.
    pub digest: String,
}

/// Accumulates a [`TableDigest`]: feed each row's cells (`None` for NULL), in column order.
#[derive(Default)]
pub struct RowHasher {
    rows: u64,
    sum: u128,
}

impl RowHasher {
    /// Adds one row, its cells as the engine renders them canonically (text or bytes).
    pub fn add_row<'a>(&mut self, cells: impl IntoIterator<Item = Option<&'a [u8]>>) {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for cell in cells {
            match cell {
                None => h.update([0u8]),
                Some(v) => {
                    h.update([1u8]);
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v);
                }
            }
        }
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    /// The table's digest.
    pub fn finish(self, table: &str) -> TableDigest {
        TableDigest {
            table: table.to_owned(),
            rows: self.rows,
            digest: format!("{:032x}", self.sum),
        }
    }
}
