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
    /// Columns in order; `id` and `site_id` come first.
    pub columns: &'static [(&'static str, ColType)],
}

use ColType::{Int, Text};

const CATALOG: &[Table] = &[
    Table {
        name: "sites",
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
        columns: &[("id", Text), ("site_id", Text), ("name", Text), ("updated_at", Text)],
    },
    Table {
        name: "memberships",
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
