//! The slice plan: from a [`Schema`] and a [`Request`], which tables hold the tenant's rows, how
//! each row is found to be the tenant's, and the order of deletes and inserts. Pure: no I/O.
//!
//! **Discovery.** From the root, every table with a foreign key into a table already in the
//! slice joins it, transitively (breadth first: a table's *distance* is one more than its
//! nearest parent's; the root's is 0). `Request::tables` restricts the discovered tables (the
//! root always stays) and adds tables that carry `tenant_column` without a foreign key;
//! `Request::exclude` leaves tables out (and what is reached only through them).
//!
//! **Which rows.** A row belongs to the tenant of its *first set parent*: a table's foreign
//! keys into the slice are ranked — NOT NULL keys first, then by the parent's distance, then by
//! the key's first column's position, then by the constraint's name — and the first key whose
//! columns are all set decides; ranking stops after the first NOT NULL key, which is always
//! set. So a table with a NOT NULL key into the slice belongs where that key points
//! (`comments.issue_id` decides a comment, whatever its nullable `author_id` says: a support
//! engineer's comment on another tenant's issue is that tenant's), and nullable keys decide only
//! tables that have no NOT NULL one. A key counts when its parent is strictly nearer the root,
//! or when the parent is not in a reference cycle with the table; inside a cycle only strictly
//! nearer parents count, so no row's tenant depends on itself. Self-references never decide (a
//! sub-task is its project's because of its project, not its parent task). A row whose keys are
//! all unset (no NOT NULL key, all nullable ones NULL) is in no tenant's slice.
//!
//! A table reached by `tenant_column` is one step from the tenant id, like a child of the
//! root (distance 1); tables reached through foreign keys may rank it as a parent.
//!
//! **Declared references.** `Request::references` are foreign keys the catalog lacks (a schema
//! whose references are logical). [`declare`] adds each to its child table's foreign keys
//! ([`ForeignKey::declared`], named `declared:child(columns)->parent(columns)`), refusing one
//! whose table or column does not exist, whose sides differ in length, or that the catalog
//! already has; [`plan`] plans from that schema. A declared reference counts like a catalog
//! key for discovery, for which key decides a row, for the order and for a restore as a new
//! tenant ([`crate::remap`]), but it is no constraint: nothing checks, defers or sets it.
//!
//! **Order.** Inserts run parents first, deletes children first, over the foreign keys
//! between slice tables. A reference cycle between tables is broken, on engines that cannot
//! defer every reference ([`Engine::defers_every_reference`]), by deferring a `DEFERRABLE`
//! constraint of the cycle, else by inserting a nullable key of the cycle as NULL and setting
//! it after every table is inserted ([`SliceTable::set_after`]); a cycle with neither is
//! refused, naming its tables. A declared reference of the cycle is taken first, and needs
//! neither: no constraint stands behind it. Self-references need nothing: a table's rows go in
//! by one statement, and its references are checked when the statement ends.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;

use petgraph::graphmap::DiGraphMap;
use serde::Serialize;

use crate::schema::{Column, Engine, ForeignKey, Schema, Table};

/// What a workflow's `copy` or `compare` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The tenant root table: its primary key (one column) holds the tenant id.
    pub root: Option<String>,
    /// Restricts the discovered tables, or (with `tenant_column`) adds tables that hold the
    /// tenant id in a column without a foreign key. Without `root`, the slice is exactly
    /// these tables, each by `tenant_column`.
    pub tables: Vec<String>,
    /// The column that holds the tenant id in the `tables` reached without a foreign key.
    pub tenant_column: Option<String>,
    /// Tables left out, with what is reached only through them.
    pub exclude: Vec<String>,
    /// Foreign keys the catalog lacks, added to it by [`declare`] before planning.
    pub references: Vec<Reference>,
}

/// A reference the workflow declares: `columns` of `child` hold `parent_columns` of `parent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reference {
    pub child: String,
    pub columns: Vec<String>,
    pub parent: String,
    pub parent_columns: Vec<String>,
}

/// As the workflow writes it: `issues(project_id) -> projects(id)`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({}) -> {}({})",
            self.child,
            self.columns.join(", "),
            self.parent,
            self.parent_columns.join(", ")
        )
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Reference {
    /// The name of its [`ForeignKey`]: `declared:child(a,b)->parent(p,q)`.
    pub fn constraint_name(&self) -> String {
        format!(
            "declared:{}({})->{}({})",
            self.child,
            self.columns.join(","),
            self.parent,
            self.parent_columns.join(",")
        )
    }

    /// Whether `fk`, a foreign key of the child table, is this reference: the same parent and
    /// the same column pairs, in any order.
    fn is(&self, fk: &ForeignKey) -> bool {
        let pairs = |columns: &[String], parent_columns: &[String]| {
            let mut p: Vec<(String, String)> =
                columns.iter().cloned().zip(parent_columns.iter().cloned()).collect();
            p.sort();
            p
        };
        fk.parent == self.parent
            && fk.columns.len() == self.columns.len()
            && pairs(&fk.columns, &fk.parent_columns) == pairs(&self.columns, &self.parent_columns)
    }
}

/// A planned slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlicePlan {
    pub engine: Engine,
    /// The root and its key; `None` for a slice of `tables` by `tenant_column` only.
    pub root: Option<RootKey>,
    /// In insert order (parents first); deletes run in the reverse order.
    pub tables: Vec<SliceTable>,
    /// Constraints the copy defers (`SET CONSTRAINTS … DEFERRED`) to break reference cycles:
    /// (table, constraint name).
    pub deferred: Vec<(String, String)>,
    /// The request's `tenant_column`: it holds the tenant in the tables reached by it, and,
    /// with a root, in the root too when the root has that column ([`crate::remap`]).
    pub tenant_column: Option<String>,
    /// The request's declared references, as the plan was made with them ([`declare`]):
    /// whatever reads the schema's foreign keys for this plan ([`crate::remap::plan`]) declares
    /// them again on the schema it is given.
    pub references: Vec<Reference>,
}

impl SlicePlan {
    /// The planned table named `name`.
    pub fn table(&self, name: &str) -> Option<&SliceTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The root table's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootKey {
    pub table: String,
    pub column: String,
    /// The key column's type, as [`Column::data_type`]: the tenant id is bound as this.
    pub data_type: String,
}

/// One table of the slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SliceTable {
    pub name: String,
    /// Every column, in table order: a digest reads them all.
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    /// How a row is found to be the tenant's: the first that applies decides (see the module).
    pub via: Vec<Via>,
    /// The tables from this one to the root by the first [`Via`], this one first
    /// (`["comments", "issues", "projects", "sites"]`); `[name]` for the root and for a table
    /// reached by `tenant_column`.
    pub path: Vec<String>,
    /// Nullable columns of a reference cycle's key: inserted as NULL, then set from the source
    /// once every table is inserted (and set to NULL before the deletes).
    pub set_after: Vec<String>,
    /// User triggers on the table ([`crate::schema::Table::triggers`]).
    pub triggers: Vec<String>,
}

impl SliceTable {
    /// The columns a copy writes: every column but the generated ones, in table order.
    pub fn copied(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }
}

/// One way a row is found to be the tenant's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Via {
    /// The root's key column equals the tenant id.
    Root { column: String },
    /// A column holding the tenant id, without a foreign key (`tenant_column`).
    TenantColumn { column: String },
    /// A foreign key into a nearer table of the slice: applies when all its columns are set,
    /// and the row is the tenant's when the parent row is.
    Parent {
        constraint: String,
        columns: Vec<String>,
        parent: String,
        parent_columns: Vec<String>,
        /// Some column of the key may be NULL.
        nullable: bool,
        /// A reference the workflow declares ([`ForeignKey::declared`]).
        declared: bool,
    },
}

/// Why a slice cannot be planned. Every variant names what is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the root table `{0}` does not exist")]
    UnknownRoot(String),
    #[error("the root table `{0}` has no primary key; the tenant id is the root's primary key")]
    RootWithoutKey(String),
    #[error(
        "the root table `{table}` has a primary key of {} columns ({}); the tenant id is one column",
        columns.len(), columns.join(", ")
    )]
    RootCompositeKey { table: String, columns: Vec<String> },
    #[error("`{field}` names a table `{table}` that does not exist")]
    UnknownTable { field: &'static str, table: String },
    #[error("`exclude` leaves out the root `{0}`")]
    RootExcluded(String),
    #[error(
        "table `{table}` does not reach the root `{root}` through foreign keys, and has no tenant column{}",
        tenant_column.as_ref().map(|c| format!(" `{c}`")).unwrap_or_default()
    )]
    Unreachable { table: String, root: String, tenant_column: Option<String> },
    #[error("table `{table}` has no column `{column}` (the `tenant_column`)")]
    NoTenantColumn { table: String, column: String },
    #[error("a slice without `root` needs `tables` and `tenant_column`")]
    NothingToSlice,
    #[error(
        "the foreign keys between {} form a cycle that cannot be broken: none of them is DEFERRABLE or has a nullable column",
        tables.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
    )]
    UnbreakableCycle { tables: Vec<String> },
    #[error("the reference `{reference}` names a table `{table}` that does not exist")]
    ReferenceUnknownTable { reference: String, table: String },
    #[error("the reference `{reference}` names a column `{table}`.`{column}` that does not exist")]
    ReferenceUnknownColumn { reference: String, table: String, column: String },
    #[error(
        "the reference `{reference}` pairs {columns} column(s) of the referring table with {parent_columns} of the referred one; each column refers to one"
    )]
    ReferenceColumnCount { reference: String, columns: usize, parent_columns: usize },
    #[error(
        "the reference `{reference}` is declared already: the catalog has it as the foreign key `{constraint}`; leave it out of `references`"
    )]
    ReferenceDeclaredAlready { reference: String, constraint: String },
    #[error(
        "the reference `{reference}` points at {} of `{table}`, which does not include its primary key ({}): a declared reference must name the parent's primary key (or columns that include it)",
        columns.join(", "), if key.is_empty() { "it has none".to_owned() } else { key.join(", ") }
    )]
    ReferenceNotParentKey {
        reference: String,
        table: String,
        columns: Vec<String>,
        key: Vec<String>,
    },
    #[error(
        "the reference `{reference}` gives `{table}`.`{column}` a second parent: `{other}` already points it at another table or column"
    )]
    ReferenceConflict { reference: String, table: String, column: String, other: String },
}

/// `schema` with `references` added to their child tables' foreign keys
/// ([`ForeignKey::declared`], named by [`Reference::constraint_name`], not deferrable), in
/// order; borrowed when there is nothing to add. A reference already declared in `schema` is
/// not added twice, so a schema that went through `declare` plans the same through [`plan`].
///
/// # Errors
/// A [`PlanError`] naming the reference as written: a table or column that does not exist,
/// sides of different lengths (or none), or a foreign key the catalog already has.
pub fn declare<'s>(
    schema: &'s Schema,
    references: &[Reference],
) -> Result<Cow<'s, Schema>, PlanError> {
    let mut out = Cow::Borrowed(schema);
    for r in references {
        let reference = r.to_string();
        if r.columns.is_empty() || r.columns.len() != r.parent_columns.len() {
            return Err(PlanError::ReferenceColumnCount {
                reference,
                columns: r.columns.len(),
                parent_columns: r.parent_columns.len(),
            });
        }
        for (table, columns) in [(&r.child, &r.columns), (&r.parent, &r.parent_columns)] {
            let Some(t) = schema.tables.get(table) else {
                return Err(PlanError::ReferenceUnknownTable { reference, table: table.clone() });
            };
            if let Some(column) = columns.iter().find(|c| t.column(c).is_none()) {
                return Err(PlanError::ReferenceUnknownColumn {
                    reference,
                    table: table.clone(),
                    column: column.clone(),
                });
            }
        }
        // The parent's columns must include its primary key (so they name one row): a typo
        // naming another column of the parent would map the references through the wrong
        // table's keys, or through none.
        let parent_key =
            schema.tables.get(&r.parent).map(|t| t.primary_key.clone()).unwrap_or_default();
        if parent_key.is_empty() || !parent_key.iter().all(|k| r.parent_columns.contains(k)) {
            return Err(PlanError::ReferenceNotParentKey {
                reference,
                table: r.parent.clone(),
                columns: r.parent_columns.clone(),
                key: parent_key,
            });
        }
        let child = out.tables.get(&r.child);
        // A column of the child that some other reference (declared or the catalog's) already
        // points elsewhere: which parent it follows would be a matter of order.
        if let Some((column, other)) = child.and_then(|t| {
            t.foreign_keys.iter().filter(|fk| !r.is(fk)).find_map(|fk| {
                fk.columns.iter().zip(&fk.parent_columns).find_map(|(c, pc)| {
                    let i = r.columns.iter().position(|rc| rc == c)?;
                    (fk.parent != r.parent || r.parent_columns.get(i) != Some(pc))
                        .then(|| (c.clone(), fk.name.clone()))
                })
            })
        }) {
            return Err(PlanError::ReferenceConflict {
                reference,
                table: r.child.clone(),
                column,
                other,
            });
        }
        match child.and_then(|t| t.foreign_keys.iter().find(|fk| r.is(fk))) {
            Some(fk) if fk.declared => continue,
            Some(fk) => {
                return Err(PlanError::ReferenceDeclaredAlready {
                    reference,
                    constraint: fk.name.clone(),
                });
            }
            None => {}
        }
        if let Some(child) = out.to_mut().tables.get_mut(&r.child) {
            child.foreign_keys.push(ForeignKey {
                name: r.constraint_name(),
                columns: r.columns.clone(),
                parent: r.parent.clone(),
                parent_columns: r.parent_columns.clone(),
                deferrable: false,
                declared: true,
            });
        }
    }
    Ok(out)
}

/// Plans the slice `request` asks for in `schema`, its references declared ([`declare`]; see
/// the module for the rules).
///
/// # Errors
/// A [`PlanError`] naming the table, column, reference or cycle at fault.
pub fn plan(schema: &Schema, request: &Request) -> Result<SlicePlan, PlanError> {
    let schema = &*declare(schema, &request.references)?;
    let root = match &request.root {
        Some(name) => {
            Some(schema.tables.get(name).ok_or_else(|| PlanError::UnknownRoot(name.clone()))?)
        }
        None => None,
    };
    check_names(schema, "exclude", &request.exclude)?;
    check_names(schema, "tables", &request.tables)?;
    let (root_key, members) = match root {
        Some(root) => (Some(root_key(root, request)?), discover(schema, request, root)?),
        None => (None, by_tenant_column(schema, request)?),
    };
    let order = order(schema.engine, &members)?;
    let tables = order
        .tables
        .iter()
        .filter_map(|name| members.get(name.as_str()))
        .map(|member| slice_table(&members, member, &order))
        .collect();
    Ok(SlicePlan {
        engine: schema.engine,
        root: root_key,
        tables,
        deferred: order.deferred,
        tenant_column: request.tenant_column.clone(),
        references: request.references.clone(),
    })
}

/// A planned table before ordering.
struct Member<'s> {
    table: &'s Table,
    /// Steps from the tenant id: 0 for the root, 1 for its children and for tables reached by
    /// `tenant_column`.
    distance: usize,
    via: Vec<Via>,
}

/// The planned tables by name.
type Members<'s> = BTreeMap<&'s str, Member<'s>>;

/// Every name in `names` (the request's `field`) is a table of `schema`.
fn check_names(schema: &Schema, field: &'static str, names: &[String]) -> Result<(), PlanError> {
    match names.iter().find(|n| !schema.tables.contains_key(*n)) {
        Some(table) => Err(PlanError::UnknownTable { field, table: table.clone() }),
        None => Ok(()),
    }
}

/// The root's key: one column, not excluded.
fn root_key(root: &Table, request: &Request) -> Result<RootKey, PlanError> {
    if request.exclude.contains(&root.name) {
        return Err(PlanError::RootExcluded(root.name.clone()));
    }
    let column = match root.primary_key.as_slice() {
        [] => return Err(PlanError::RootWithoutKey(root.name.clone())),
        [column] => column,
        columns => {
            return Err(PlanError::RootCompositeKey {
                table: root.name.clone(),
                columns: columns.to_vec(),
            });
        }
    };
    Ok(RootKey {
        table: root.name.clone(),
        column: column.clone(),
        // A catalog always lists the key's column; a schema built by hand may not, and then
        // the type is unknown: empty.
        data_type: root.column(column).map(|c| c.data_type.clone()).unwrap_or_default(),
    })
}

/// The slice of a root: the tables that reach it through foreign keys (breadth first), plus the
/// listed tables that do not but carry `tenant_column`.
fn discover<'s>(
    schema: &'s Schema,
    request: &Request,
    root: &'s Table,
) -> Result<Members<'s>, PlanError> {
    let in_graph = |name: &str| {
        !request.exclude.iter().any(|e| e == name)
            && (request.tables.is_empty()
                || name == root.name
                || request.tables.iter().any(|t| t == name))
    };
    let mut distance: BTreeMap<&'s str, usize> = BTreeMap::from([(root.name.as_str(), 0)]);
    for d in 1.. {
        let joining: Vec<&'s str> = schema
            .tables
            .values()
            .filter(|t| in_graph(&t.name) && !distance.contains_key(t.name.as_str()))
            .filter(|t| {
                t.foreign_keys
                    .iter()
                    .any(|fk| fk.parent != t.name && distance.contains_key(fk.parent.as_str()))
            })
            .map(|t| t.name.as_str())
            .collect();
        if joining.is_empty() {
            break;
        }
        distance.extend(joining.into_iter().map(|name| (name, d)));
    }
    let discovered: Vec<&'s str> = distance.keys().copied().filter(|n| *n != root.name).collect();

    let mut members = Members::new();
    members.insert(
        root.name.as_str(),
        Member {
            table: root,
            distance: 0,
            via: root.primary_key.iter().map(|c| Via::Root { column: c.clone() }).collect(),
        },
    );
    for name in request.tables.iter().filter(|n| in_graph(n) && !distance.contains_key(n.as_str()))
    {
        let Some(table) = schema.tables.get(name) else {
            return Err(PlanError::UnknownTable { field: "tables", table: name.clone() });
        };
        let Some(column) = request.tenant_column.as_deref() else {
            return Err(PlanError::Unreachable {
                table: name.clone(),
                root: root.name.clone(),
                tenant_column: None,
            });
        };
        let via = vec![tenant_via(table, column)?];
        members.insert(table.name.as_str(), Member { table, distance: 1, via });
    }
    for name in &discovered {
        if let Some(table) = schema.tables.get(*name) {
            members.insert(name, Member { table, distance: distance[name], via: Vec::new() });
        }
    }
    let cycle_of = component_of(&members);
    for name in discovered {
        let via = parent_vias(&members, &cycle_of, name);
        if let Some(member) = members.get_mut(name) {
            member.via = via;
        }
    }
    Ok(members)
}

/// `column` of `table` as its [`Via::TenantColumn`].
fn tenant_via(table: &Table, column: &str) -> Result<Via, PlanError> {
    match table.column(column) {
        Some(_) => Ok(Via::TenantColumn { column: column.to_owned() }),
        None => {
            Err(PlanError::NoTenantColumn { table: table.name.clone(), column: column.to_owned() })
        }
    }
}

/// The slice of `tables` by `tenant_column`, without a root.
fn by_tenant_column<'s>(schema: &'s Schema, request: &Request) -> Result<Members<'s>, PlanError> {
    let Some(column) = request.tenant_column.as_deref() else {
        return Err(PlanError::NothingToSlice);
    };
    let mut members = Members::new();
    for name in request.tables.iter().filter(|n| !request.exclude.contains(n)) {
        let Some(table) = schema.tables.get(name) else {
            return Err(PlanError::UnknownTable { field: "tables", table: name.clone() });
        };
        let via = vec![tenant_via(table, column)?];
        members.insert(table.name.as_str(), Member { table, distance: 1, via });
    }
    if members.is_empty() {
        return Err(PlanError::NothingToSlice);
    }
    Ok(members)
}

/// Whether some column of `fk` may be NULL (a column the table does not list counts as
/// nullable).
fn is_nullable(table: &Table, fk: &ForeignKey) -> bool {
    fk.columns.iter().any(|c| table.column(c).is_none_or(|c| c.nullable))
}

/// The vias of the discovered table `name`: its ranked foreign keys into the slice, up to and
/// including the first NOT NULL one (see the module).
fn parent_vias(members: &Members<'_>, cycle_of: &BTreeMap<&str, usize>, name: &str) -> Vec<Via> {
    let Some(member) = members.get(name) else {
        return Vec::new();
    };
    let table = member.table;
    let position = |fk: &ForeignKey| {
        fk.columns
            .first()
            .and_then(|c| table.columns.iter().position(|col| &col.name == c))
            .unwrap_or(usize::MAX)
    };
    let mut ranked: Vec<(bool, usize, usize, &ForeignKey)> = table
        .foreign_keys
        .iter()
        .filter(|fk| fk.parent != table.name)
        .filter_map(|fk| {
            let parent = members.get(fk.parent.as_str())?;
            let nearer = parent.distance < member.distance;
            let outside_cycle = cycle_of.get(fk.parent.as_str()) != cycle_of.get(name);
            (nearer || outside_cycle)
                .then(|| (is_nullable(table, fk), parent.distance, position(fk), fk))
        })
        .collect();
    ranked.sort_by(|a, b| (a.0, a.1, a.2, &a.3.name).cmp(&(b.0, b.1, b.2, &b.3.name)));
    let mut via = Vec::new();
    for (nullable, _, _, fk) in ranked {
        via.push(Via::Parent {
            constraint: fk.name.clone(),
            columns: fk.columns.clone(),
            parent: fk.parent.clone(),
            parent_columns: fk.parent_columns.clone(),
            nullable,
            declared: fk.declared,
        });
        if !nullable {
            break;
        }
    }
    via
}

/// A foreign key between two planned tables (not a self-reference), by their indexes in the
/// name order of [`Members`].
struct Edge<'s> {
    child: usize,
    parent: usize,
    table: &'s Table,
    fk: &'s ForeignKey,
}

/// Every foreign key between two distinct planned tables.
fn edges<'s>(members: &Members<'s>) -> Vec<Edge<'s>> {
    let index: BTreeMap<&str, usize> =
        members.keys().enumerate().map(|(i, name)| (*name, i)).collect();
    let mut out = Vec::new();
    for (child, member) in members.values().enumerate() {
        for fk in &member.table.foreign_keys {
            match index.get(fk.parent.as_str()) {
                Some(&parent) if parent != child => {
                    out.push(Edge { child, parent, table: member.table, fk })
                }
                _ => {}
            }
        }
    }
    out
}

/// The strongly connected components of `n` nodes over the `live` references.
fn components(n: usize, refs: &[Edge<'_>], live: &[bool]) -> Vec<Vec<usize>> {
    let mut graph = DiGraphMap::<usize, ()>::new();
    for i in 0..n {
        graph.add_node(i);
    }
    for (r, _) in refs.iter().zip(live).filter(|(_, live)| **live) {
        graph.add_edge(r.parent, r.child, ());
    }
    let mut comps = petgraph::algo::tarjan_scc(&graph);
    for c in &mut comps {
        c.sort_unstable();
    }
    comps
}

/// Each planned table's strongly connected component over every foreign key between planned
/// tables: two tables share one exactly when they are in a reference cycle.
fn component_of<'s>(members: &Members<'s>) -> BTreeMap<&'s str, usize> {
    let refs = edges(members);
    let names: Vec<&'s str> = members.keys().copied().collect();
    let mut out = BTreeMap::new();
    for (ci, comp) in components(names.len(), &refs, &vec![true; refs.len()]).iter().enumerate() {
        out.extend(comp.iter().map(|&i| (names[i], ci)));
    }
    out
}

/// The insert order and how its cycles are broken.
struct Order {
    tables: Vec<String>,
    deferred: Vec<(String, String)>,
    set_after: BTreeMap<String, Vec<String>>,
}

/// Parents first over the foreign keys between planned tables, ties by (distance, name); on an
/// engine that cannot defer every reference, cycles broken first ([`break_cycles`]).
fn order(engine: Engine, members: &Members<'_>) -> Result<Order, PlanError> {
    let names: Vec<&str> = members.keys().copied().collect();
    let refs = edges(members);
    let mut live = vec![true; refs.len()];
    let mut order = Order { tables: Vec::new(), deferred: Vec::new(), set_after: BTreeMap::new() };
    if !engine.defers_every_reference() {
        break_cycles(members, &names, &refs, &mut live, &mut order)?;
    }
    let key = |i: usize| (members.get(names[i]).map_or(0, |m| m.distance), names[i]);
    let mut comps = components(names.len(), &refs, &live);
    for c in &mut comps {
        c.sort_by_key(|&i| key(i));
    }
    let mut comp_of = vec![0; names.len()];
    for (ci, c) in comps.iter().enumerate() {
        for &i in c {
            comp_of[i] = ci;
        }
    }
    let deps: BTreeSet<(usize, usize)> = refs
        .iter()
        .zip(&live)
        .filter(|(r, live)| **live && comp_of[r.parent] != comp_of[r.child])
        .map(|(r, _)| (comp_of[r.parent], comp_of[r.child]))
        .collect();
    let mut waiting = vec![0usize; comps.len()];
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    for (p, c) in deps {
        waiting[c] += 1;
        after[p].push(c);
    }
    let mut ready: BinaryHeap<Reverse<((usize, &str), usize)>> = (0..comps.len())
        .filter(|&ci| waiting[ci] == 0)
        .map(|ci| Reverse((key(comps[ci][0]), ci)))
        .collect();
    while let Some(Reverse((_, ci))) = ready.pop() {
        order.tables.extend(comps[ci].iter().map(|&i| names[i].to_owned()));
        for &c in &after[ci] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(Reverse((key(comps[c][0]), c)));
            }
        }
    }
    order.deferred.sort();
    for (table, columns) in &mut order.set_after {
        if let Some(m) = members.get(table.as_str()) {
            columns.sort_by_key(|c| m.table.columns.iter().position(|col| &col.name == c));
        }
    }
    Ok(order)
}

/// Takes references out of the order until no cycle is left: in the cycle of the smallest
/// table name, a declared reference (no constraint: it needs nothing), else a `DEFERRABLE` key
/// (deferred to commit), else a key with a nullable column (its nullable columns set after
/// every insert); among those, one that does not decide its table's rows (`via[0]`) first,
/// then by constraint name. Then every reference taken out is put back, last first, if the
/// order stays without a cycle: no cycle is broken twice (one nullable key can break several
/// cycles through it).
fn break_cycles(
    members: &Members<'_>,
    names: &[&str],
    refs: &[Edge<'_>],
    live: &mut [bool],
    order: &mut Order,
) -> Result<(), PlanError> {
    let has_cycle =
        |live: &[bool]| components(names.len(), refs, live).into_iter().any(|c| c.len() > 1);
    let mut broken = Vec::new();
    loop {
        let comps = components(names.len(), refs, live);
        let Some(cycle) = comps.into_iter().filter(|c| c.len() > 1).min() else {
            break;
        };
        let deciding = |r: &Edge<'_>| {
            members.get(names[r.child]).and_then(|m| m.via.first()).is_some_and(
                |v| matches!(v, Via::Parent { constraint, .. } if *constraint == r.fk.name),
            )
        };
        let best = refs
            .iter()
            .enumerate()
            .filter(|(i, r)| live[*i] && cycle.contains(&r.child) && cycle.contains(&r.parent))
            .filter(|(_, r)| r.fk.declared || r.fk.deferrable || is_nullable(r.table, r.fk))
            .min_by_key(|(_, r)| {
                (!r.fk.declared, !r.fk.deferrable, deciding(r), r.fk.name.as_str(), r.child)
            });
        let Some((i, _)) = best else {
            return Err(PlanError::UnbreakableCycle {
                tables: cycle.iter().map(|&i| names[i].to_owned()).collect(),
            });
        };
        live[i] = false;
        broken.push(i);
    }
    for &i in broken.iter().rev() {
        live[i] = true;
        if has_cycle(live) {
            live[i] = false;
        }
    }
    for i in broken.into_iter().filter(|&i| !live[i]) {
        let r = &refs[i];
        if r.fk.declared {
            continue;
        }
        if r.fk.deferrable {
            order.deferred.push((r.table.name.clone(), r.fk.name.clone()));
        } else {
            let columns = order.set_after.entry(r.table.name.clone()).or_default();
            for c in &r.fk.columns {
                let nullable = r.table.column(c).is_none_or(|col| col.nullable);
                if nullable && !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
    }
    Ok(())
}

/// The [`SliceTable`] of a planned table.
fn slice_table(members: &Members<'_>, member: &Member<'_>, order: &Order) -> SliceTable {
    let table = member.table;
    SliceTable {
        name: table.name.clone(),
        columns: table.columns.clone(),
        primary_key: table.primary_key.clone(),
        via: member.via.clone(),
        path: path(members, &table.name),
        set_after: order.set_after.get(&table.name).cloned().unwrap_or_default(),
        triggers: table.triggers.clone(),
    }
}

/// From `name` to the root by each table's first via, `name` first.
fn path(members: &Members<'_>, name: &str) -> Vec<String> {
    let mut path = vec![name.to_owned()];
    let mut at = name;
    // The vias form no cycle (see the module); the bound only guards that claim.
    while path.len() <= members.len() {
        match members.get(at).and_then(|m| m.via.first()) {
            Some(Via::Parent { parent, .. }) => {
                path.push(parent.clone());
                at = parent;
            }
            _ => break,
        }
    }
    path
}

impl SlicePlan {
    /// The plan as `rewind plan` and `--dry-run` print it: one line per table in insert
    /// order (how its rows are found to be the tenant's), then, indented, what the copy does
    /// differently for it (cycle keys set after the inserts, deferred constraints, triggers
    /// not fired); last, that deletes run in the reverse order.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            lines.push(format!("{}. {}", i + 1, self.describe_rows(t)));
            if !t.set_after.is_empty() {
                lines.push(format!(
                    "   {} inserted as NULL and set after every insert (breaks a reference cycle)",
                    t.set_after
                        .iter()
                        .map(|c| format!("{}.{c}", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for (_, constraint) in self.deferred.iter().filter(|(table, _)| *table == t.name) {
                lines.push(format!(
                    "   constraint {constraint} checked at commit (breaks a reference cycle)"
                ));
            }
            if !t.triggers.is_empty() {
                let how = match self.engine {
                    Engine::Postgres => {
                        "not fired during the copy (session_replication_role = replica)"
                    }
                    Engine::Sqlite => "dropped for the copy and recreated before it commits",
                    Engine::Mysql => {
                        "fire during the copy: each must test `@rewind_restore IS NULL` (the copy refuses those that do not)"
                    }
                };
                lines.push(format!("   triggers {how}: {}", t.triggers.join(", ")));
            }
        }
        lines.push("deletes run in the reverse order".to_owned());
        lines
    }

    /// `issues ← projects ← sites, by issues.project_id → projects.id`.
    fn describe_rows(&self, t: &SliceTable) -> String {
        let mut by = Vec::new();
        for via in &t.via {
            match via {
                Via::Root { column } => {
                    let data_type = self.root.as_ref().map_or("", |r| r.data_type.as_str());
                    return format!(
                        "{} — root, tenant = {}.{column} ({data_type})",
                        t.name, t.name
                    );
                }
                Via::TenantColumn { column } => {
                    return format!("{} — tenant = {}.{column} (no foreign key)", t.name, t.name);
                }
                Via::Parent { columns, parent, parent_columns, nullable, declared, .. } => {
                    by.push(format!(
                        "{} → {}{}{}",
                        key_ref(&t.name, columns),
                        key_ref(parent, parent_columns),
                        if *declared { " (declared)" } else { "" },
                        if *nullable { " when set" } else { "" }
                    ));
                }
            }
        }
        let mut line = format!("{}, by {}", t.path.join(" ← "), by.join(", else "));
        if t.via.last().is_some_and(|v| matches!(v, Via::Parent { nullable: true, .. })) {
            line.push_str("; rows with none set are in no slice");
        }
        line
    }
}

/// `table.column`, or `table(a, b)` for a composite key.
pub(crate) fn key_ref(table: &str, columns: &[String]) -> String {
    match columns {
        [one] => format!("{table}.{one}"),
        _ => format!("{table}({})", columns.join(", ")),
    }
}
