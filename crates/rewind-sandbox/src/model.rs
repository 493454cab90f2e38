//! The system's in-memory view of every live store while it generates writes: every row, which
//! site owns it, and each site's per-table digest (what the ledger records).

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::{SliceDigest, row_hash};
use crate::media::SHA_COL;
use crate::rng::Rng;
use crate::schema::{Store, StoreKind};
use crate::value::{Row, Val};

/// One write to one row.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub store: Store,
    pub table: usize,
    pub id: String,
    pub site: String,
    /// The new row, or `None` to delete it.
    pub row: Option<Row>,
    /// The content of a media object's new version.
    pub blob: Option<Vec<u8>>,
}

/// What applying a write changed.
pub(crate) struct Applied {
    /// The site's digest of the table after the write.
    pub digest: SliceDigest,
    /// A media blob no object references any more.
    pub released_blob: Option<String>,
}

#[derive(Default)]
struct StoreModel {
    tables: Vec<BTreeMap<String, (Row, u128)>>,
    by_site: BTreeMap<String, Vec<BTreeSet<String>>>,
    digests: BTreeMap<(String, usize), SliceDigest>,
    blob_refs: BTreeMap<String, u32>,
}

/// Every live row of every store.
#[derive(Default)]
pub(crate) struct Model {
    stores: BTreeMap<String, StoreModel>,
}

fn sha_of(kind: StoreKind, row: &Row) -> Option<String> {
    if kind == StoreKind::Media {
        row.get(SHA_COL).and_then(Val::as_text).map(str::to_owned)
    } else {
        None
    }
}

impl Model {
    /// An empty model of these stores.
    pub(crate) fn new(stores: &[Store]) -> Self {
        let mut m = Model::default();
        for s in stores {
            m.stores.insert(
                s.name().to_owned(),
                StoreModel {
                    tables: s.kind.tables().iter().map(|_| BTreeMap::new()).collect(),
                    ..StoreModel::default()
                },
            );
        }
        m
    }

    /// Applies a write to the model.
    pub(crate) fn apply(&mut self, w: &Write) -> Applied {
        let kind = w.store.kind;
        let ntables = kind.tables().len();
        let table_name = kind.tables().get(w.table).map_or("", |t| t.name);
        let st = self.stores.entry(w.store.name().to_owned()).or_insert_with(|| StoreModel {
            tables: (0..ntables).map(|_| BTreeMap::new()).collect(),
            ..StoreModel::default()
        });
        let digest = st.digests.entry((w.site.clone(), w.table)).or_default();
        let mut released = None;
        let old = match &w.row {
            Some(row) => {
                let h = row_hash(table_name, row);
                digest.add(h);
                if let Some(sha) = sha_of(kind, row) {
                    *st.blob_refs.entry(sha).or_default() += 1;
                }
                st.tables[w.table].insert(w.id.clone(), (row.clone(), h))
            }
            None => st.tables[w.table].remove(&w.id),
        };
        if let Some((old_row, old_h)) = old {
            digest.remove(old_h);
            if let Some(sha) = sha_of(kind, &old_row) {
                let n = st.blob_refs.entry(sha.clone()).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.blob_refs.remove(&sha);
                    released = Some(sha);
                }
            }
        }
        let digest = *digest;
        let ids = st
            .by_site
            .entry(w.site.clone())
            .or_insert_with(|| (0..ntables).map(|_| BTreeSet::new()).collect());
        if w.row.is_some() {
            ids[w.table].insert(w.id.clone());
        } else {
            ids[w.table].remove(&w.id);
        }
        Applied { digest, released_blob: released }
    }

    fn site_ids(&self, store: &Store, site: &str, t: usize) -> Option<&BTreeSet<String>> {
        self.stores.get(store.name())?.by_site.get(site)?.get(t)
    }

    /// Ids of a site's rows in a table.
    pub(crate) fn ids(&self, store: &Store, site: &str, t: usize) -> Vec<String> {
        self.site_ids(store, site, t).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// A site's rows in a table.
    pub(crate) fn rows<'a>(
        &'a self,
        store: &Store,
        site: &str,
        table: &str,
    ) -> impl Iterator<Item = &'a Row> + 'a {
        let t = store.kind.table_index(table).unwrap_or(0);
        let st = self.stores.get(store.name());
        let ids = self.site_ids(store, site, t);
        ids.into_iter()
            .flatten()
            .filter_map(move |id| st.and_then(|s| s.tables[t].get(id)).map(|(row, _)| row))
    }

    /// Number of a site's rows in a table.
    pub(crate) fn count(&self, store: &Store, site: &str, table: &str) -> usize {
        let t = store.kind.table_index(table).unwrap_or(0);
        self.site_ids(store, site, t).map_or(0, BTreeSet::len)
    }

    /// One of a site's rows in a table, at random.
    pub(crate) fn pick(
        &self,
        rng: &mut Rng,
        store: &Store,
        site: &str,
        table: &str,
    ) -> Option<Row> {
        let n = self.count(store, site, table);
        if n == 0 {
            return None;
        }
        let k = rng.below(n as u64) as usize;
        self.rows(store, site, table).nth(k).cloned()
    }
}

impl Model {
    /// Rows of every store.
    pub(crate) fn total_rows(&self) -> u64 {
        self.stores.values().map(|s| s.tables.iter().map(|t| t.len() as u64).sum::<u64>()).sum()
    }
}
