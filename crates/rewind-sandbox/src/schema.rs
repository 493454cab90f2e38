//! The schema of every store. Every table's first column is `id` (a stable primary key, TEXT)
//! and its second `site_id` (the tenant, TEXT): a site's slice of any table is
//! `WHERE site_id = ?`, and copying it into a live store by primary key is idempotent.

use std::fmt;

/// The type of a column. Every column is NOT NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    /// UTF-8 text.
    Text,
    /// 64-bit signed integer.
    Int,
}

/// One table of a store.
#[derive(Debug)]
pub struct Table {
    /// Table name (same in SQLite and PostgreSQL).
    pub name: &'static str,
    /// True when the row's `id` is the site id itself (`catalog.sites`, one row per site): a
    /// restore as a new site gives it the new site id, not a new row id.
    pub id_is_site: bool,
    /// Columns in order; `id` and `site_id` come first.
    pub columns: &'static [(&'static str, ColType)],
}

use ColType::{Int, Text};

const CATALOG: &[Table] = &[
    Table {
        name: "sites",
        id_is_site: true,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("url", Text),
            ("cloud_id", Text),
            ("region", Text),
            ("shard", Text),
            ("products", Text),
            ("plan", Text),
            ("status", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "licences",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("product", Text),
            ("tier", Text),
            ("seats", Int),
            ("updated_at", Text),
        ],
    },
];

const CONTACTS: &[Table] = &[Table {
    name: "contacts",
    id_is_site: false,
    columns: &[
        ("id", Text),
        ("site_id", Text),
        ("name", Text),
        ("email", Text),
        ("role", Text),
        ("updated_at", Text),
    ],
}];

const IDENTITY: &[Table] = &[
    Table {
        name: "users",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("email", Text),
            ("display_name", Text),
            ("active", Int),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "groups",
        id_is_site: false,
        columns: &[("id", Text), ("site_id", Text), ("name", Text), ("updated_at", Text)],
    },
    Table {
        name: "memberships",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("group_id", Text),
            ("user_id", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "permissions",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("group_id", Text),
            ("product", Text),
            ("level", Text),
            ("updated_at", Text),
        ],
    },
];

const TRACKER: &[Table] = &[
    Table {
        name: "projects",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("key", Text),
            ("name", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "issues",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("project_id", Text),
            ("number", Int),
            ("title", Text),
            ("status", Text),
            ("assignee", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "comments",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("issue_id", Text),
            ("author", Text),
            ("body", Text),
            ("updated_at", Text),
        ],
    },
];

const WIKI: &[Table] = &[
    Table {
        name: "spaces",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("key", Text),
            ("name", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "pages",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("space_id", Text),
            ("title", Text),
            ("body", Text),
            ("version", Int),
            ("updated_at", Text),
        ],
    },
];

const MEDIA: &[Table] = &[Table {
    name: "objects",
    id_is_site: false,
    columns: &[
        ("id", Text),
        ("site_id", Text),
        ("name", Text),
        ("content_type", Text),
        ("version", Int),
        ("sha256", Text),
        ("size", Int),
        ("updated_at", Text),
    ],
}];

const FLAGS: &[Table] = &[Table {
    name: "flags",
    id_is_site: false,
    columns: &[
        ("id", Text),
        ("site_id", Text),
        ("flag", Text),
        ("enabled", Int),
        ("updated_at", Text),
    ],
}];

const APPS: &[Table] = &[
    Table {
        name: "installations",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("app", Text),
            ("version", Text),
            ("config", Text),
            ("updated_at", Text),
        ],
    },
    Table {
        name: "webhooks",
        id_is_site: false,
        columns: &[
            ("id", Text),
            ("site_id", Text),
            ("installation_id", Text),
            ("url", Text),
            ("events", Text),
            ("updated_at", Text),
        ],
    },
];

/// A reference between two tables of one store that no FOREIGN KEY declares (the sandbox's
/// tables declare none): `child.column` holds the `id` of a row of `parent`, of the same site.
/// A restore as a new site must make it follow the parent's new id; `verify --remapped` checks
/// it does, and a restore workflow declares it on its `copy` and `compare` steps (`references =
/// ["issues(project_id) -> projects(id)", ...]`, [`Reference::declaration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The referencing table.
    pub child: &'static str,
    /// Its column holding the parent's id.
    pub column: &'static str,
    /// The referenced table (by its `id`).
    pub parent: &'static str,
}

impl Reference {
    /// As a workflow's `references` declares it: `issues(project_id) -> projects(id)`.
    pub fn declaration(&self) -> String {
        format!("{}({}) -> {}(id)", self.child, self.column, self.parent)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.declaration())
    }
}

const fn reference(child: &'static str, column: &'static str, parent: &'static str) -> Reference {
    Reference { child, column, parent }
}

const IDENTITY_REFERENCES: &[Reference] = &[
    reference("memberships", "group_id", "groups"),
    reference("memberships", "user_id", "users"),
    reference("permissions", "group_id", "groups"),
];
const TRACKER_REFERENCES: &[Reference] =
    &[reference("issues", "project_id", "projects"), reference("comments", "issue_id", "issues")];
const WIKI_REFERENCES: &[Reference] = &[reference("pages", "space_id", "spaces")];
const APPS_REFERENCES: &[Reference] = &[reference("webhooks", "installation_id", "installations")];

/// The regions sites live in; each has its own identity store.
pub const REGIONS: &[&str] = &["us-east", "eu-west", "ap-southeast"];

/// The products a site can have; each has one database per shard.
pub const PRODUCTS: &[&str] = &["tracker", "wiki"];

/// What a store holds; some kinds have one store per region or per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKind {
    /// Site records: id, URL, products, status; and licences.
    Catalog,
    /// Customer contacts.
    Contacts,
    /// Users, groups, memberships, permissions; one store per region.
    Identity,
    /// The tracker product database; one store per shard.
    Tracker,
    /// The wiki product database; one store per shard.
    Wiki,
    /// Media objects: rows of object versions, content-addressed files on disk.
    Media,
    /// Feature flags.
    Flags,
    /// Third-party app installations and their webhooks.
    Apps,
}

impl StoreKind {
    /// Every kind, in the order a site is deleted (the catalog last).
    pub const ALL: [StoreKind; 8] = [
        StoreKind::Tracker,
        StoreKind::Wiki,
        StoreKind::Media,
        StoreKind::Identity,
        StoreKind::Apps,
        StoreKind::Flags,
        StoreKind::Contacts,
        StoreKind::Catalog,
    ];

    /// The kind's tables.
    pub fn tables(self) -> &'static [Table] {
        match self {
            StoreKind::Catalog => CATALOG,
            StoreKind::Contacts => CONTACTS,
            StoreKind::Identity => IDENTITY,
            StoreKind::Tracker => TRACKER,
            StoreKind::Wiki => WIKI,
            StoreKind::Media => MEDIA,
            StoreKind::Flags => FLAGS,
            StoreKind::Apps => APPS,
        }
    }

    /// The references between the kind's tables (none is declared by a FOREIGN KEY). The
    /// catalog's `sites.id` is the site id itself ([`Table::id_is_site`]), not a reference.
    pub fn references(self) -> &'static [Reference] {
        match self {
            StoreKind::Identity => IDENTITY_REFERENCES,
            StoreKind::Tracker => TRACKER_REFERENCES,
            StoreKind::Wiki => WIKI_REFERENCES,
            StoreKind::Apps => APPS_REFERENCES,
            StoreKind::Catalog | StoreKind::Contacts | StoreKind::Media | StoreKind::Flags => &[],
        }
    }

    /// The kind's name, the prefix of its stores' names.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Catalog => "catalog",
            StoreKind::Contacts => "contacts",
            StoreKind::Identity => "identity",
            StoreKind::Tracker => "tracker",
            StoreKind::Wiki => "wiki",
            StoreKind::Media => "media",
            StoreKind::Flags => "flags",
            StoreKind::Apps => "apps",
        }
    }

    /// Index of a table by name.
    pub fn table_index(self, name: &str) -> Option<usize> {
        self.tables().iter().position(|t| t.name == name)
    }
}

/// One store (or one shard of a store): `catalog`, `identity-eu-west`, `tracker-s03`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Store {
    /// What it holds.
    pub kind: StoreKind,
    name: String,
}

impl Store {
    /// A store of a kind without region or shard.
    pub fn single(kind: StoreKind) -> Self {
        Self { kind, name: kind.name().to_owned() }
    }

    /// The identity store of a region.
    pub fn identity(region: &str) -> Self {
        Self { kind: StoreKind::Identity, name: format!("identity-{region}") }
    }

    /// A product database shard (`tracker-s03`).
    pub fn product(kind: StoreKind, shard: &str) -> Self {
        Self { kind, name: format!("{}-{shard}", kind.name()) }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name with `-` replaced by `_`, for PostgreSQL schema names.
    pub fn ident(&self) -> String {
        self.name.replace('-', "_")
    }

    /// Every store of a sandbox with `shards` shards, in a stable order.
    pub fn all(shards: u32) -> Vec<Store> {
        let mut out = vec![Store::single(StoreKind::Catalog), Store::single(StoreKind::Contacts)];
        out.extend(REGIONS.iter().map(|r| Store::identity(r)));
        for kind in [StoreKind::Tracker, StoreKind::Wiki] {
            out.extend((1..=shards).map(|s| Store::product(kind, &shard_name(s))));
        }
        out.extend([StoreKind::Media, StoreKind::Flags, StoreKind::Apps].map(Store::single));
        out
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `s01`, `s02`, ...
pub fn shard_name(n: u32) -> String {
    format!("s{n:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_starts_with_id_and_site_id() {
        for kind in StoreKind::ALL {
            for t in kind.tables() {
                assert_eq!(t.columns[0], ("id", ColType::Text), "{}", t.name);
                assert_eq!(t.columns[1], ("site_id", ColType::Text), "{}", t.name);
            }
        }
        // Every reference joins two tables of its kind, by a text column of the child.
        for kind in StoreKind::ALL {
            for r in kind.references() {
                let child = &kind.tables()[kind.table_index(r.child).unwrap()];
                assert!(kind.table_index(r.parent).is_some(), "{r}");
                assert!(child.columns.contains(&(r.column, ColType::Text)), "{r}");
            }
        }
        assert_eq!(
            StoreKind::Tracker.references()[1].declaration(),
            "comments(issue_id) -> issues(id)"
        );
        let keyed: Vec<&str> = StoreKind::ALL
            .iter()
            .flat_map(|k| k.tables())
            .filter(|t| t.id_is_site)
            .map(|t| t.name)
            .collect();
        assert_eq!(keyed, ["sites"]);
        let names: Vec<String> = Store::all(2).iter().map(|s| s.name().to_owned()).collect();
        assert_eq!(
            names,
            [
                "catalog",
                "contacts",
                "identity-us-east",
                "identity-eu-west",
                "identity-ap-southeast",
                "tracker-s01",
                "tracker-s02",
                "wiki-s01",
                "wiki-s02",
                "media",
                "flags",
                "apps"
            ]
        );
    }
}
