//! Verify's side of a restore as a new site (`verify --remapped MAP`): the new site's rows,
//! mapped back to the old site's ids, must be the old site's state at the restore point.
//!
//! A restore as a new site (`copy … as`, `restore-media --as`) gives the site the new id in
//! every tenant column, every row a new id, and makes every reference follow its parent's new
//! id. Row ids are TEXT uuids, so a row's new id is derived, not kept anywhere: the documented
//! rule of `copy … as` (README, "Restore as a new tenant") is uuid v5 in the namespace
//! [`NAMESPACE`] of `new_site \0 table \0 old-id` (the old id lowercase, hyphenated). This
//! module implements that rule from its documentation and shares no code with the restore
//! (`rewind-slice`), so that verify stays an independent check; a test pins the two to the same
//! value. The catalog's `sites.id` is the site id itself: it becomes the new site id.
//!
//! Given the ids the old site had in each table at the restore point (replayed from the ledger
//! by [`crate::verify`]), [`map_back`] rewrites the new site's live rows to the old ids (`id`,
//! `site_id`, and each reference column through the referenced table's map), hashes them as
//! the ledger does, and names every row that is extra, missing, or whose reference points at no
//! row of the new site.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::digest::{SliceDigest, row_hash};
use crate::schema::StoreKind;
use crate::value::Val;

/// The namespace of the new ids `copy … as` derives for uuid keys (rewind's own, documented).
pub(crate) const NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d1c_52a4_3b8e_4f0a_9e27_c4a1_d0b5_7e39);

/// The new id of the row `old` (a uuid, any spelling) of `table` in the site restored as
/// `new_site`: uuid v5 of [`NAMESPACE`] and `new_site \0 table \0 old` (lowercase, hyphenated).
/// `None` when `old` is not a uuid (a restore as new refuses such a key).
pub(crate) fn new_row_id(new_site: &str, table: &str, old: &str) -> Option<String> {
    let old = uuid::Uuid::parse_str(old).ok()?;
    let name = format!("{new_site}\0{table}\0{}", old.hyphenated());
    Some(uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).hyphenated().to_string())
}

/// What is wrong with one row of a site restored as new.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowFault {
    /// The live row's id is not the new id of any row the old site had at the restore point.
    Extra,
    /// A row the old site had at the restore point has no row under its new id.
    Missing,
    /// A reference column points at no row of the new site in the referenced table.
    DanglingReference,
}

/// One wrong row of a site restored as new.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowProblem {
    /// The table.
    pub table: String,
    /// The row's id: the live (new) id, or for a missing row the id it should have.
    pub row: String,
    /// What is wrong.
    pub fault: RowFault,
    /// In words.
    pub detail: String,
}

/// The old site's row ids per table of a store (by table index), at an instant.
pub(crate) type TableIds = Vec<BTreeSet<String>>;

/// The new site's rows per table of a store (by table index), each in column order.
pub(crate) type TableRows = Vec<Vec<Vec<Val>>>;

/// Per table, the map from the new site's row ids to the old site's, for the rows the old site
/// had (`old_ids`).
fn inverse_maps(
    kind: StoreKind,
    new_site: &str,
    old_site: &str,
    old_ids: &TableIds,
) -> Vec<BTreeMap<String, String>> {
    kind.tables()
        .iter()
        .enumerate()
        .map(|(t, table)| {
            let ids = old_ids.get(t);
            if table.id_is_site {
                // One row per site, whose id is the site: it becomes the new site id.
                return if ids.is_some_and(|s| s.contains(old_site)) {
                    BTreeMap::from([(new_site.to_owned(), old_site.to_owned())])
                } else {
                    BTreeMap::new()
                };
            }
            ids.into_iter()
                .flatten()
                .filter_map(|old| Some((new_row_id(new_site, table.name, old)?, old.clone())))
                .collect()
        })
        .collect()
}

/// Maps the new site's live `rows` of one store back to the old site (ids, `site_id`,
/// references) and returns, per table, the digest of the mapped rows (to compare with the old
/// site's ledger state at the restore point) and every extra, missing or dangling row.
pub(crate) fn map_back(
    kind: StoreKind,
    new_site: &str,
    old_site: &str,
    old_ids: &TableIds,
    rows: &TableRows,
) -> (Vec<SliceDigest>, Vec<RowProblem>) {
    let tables = kind.tables();
    let inverse = inverse_maps(kind, new_site, old_site, old_ids);
    let empty = Vec::new();
    let live_ids: Vec<BTreeSet<&str>> = (0..tables.len())
        .map(|t| {
            rows.get(t)
                .unwrap_or(&empty)
                .iter()
                .filter_map(|r| r.first().and_then(Val::as_text))
                .collect()
        })
        .collect();
    let mut digests = vec![SliceDigest::default(); tables.len()];
    let mut problems = Vec::new();
    for (t, table) in tables.iter().enumerate() {
        let refs: Vec<(usize, usize, &str)> = kind
            .references()
            .iter()
            .filter(|r| r.child == table.name)
            .filter_map(|r| {
                let col = table.columns.iter().position(|(c, _)| *c == r.column)?;
                Some((col, kind.table_index(r.parent)?, r.column))
            })
            .collect();
        for row in rows.get(t).unwrap_or(&empty) {
            let id = row.first().map(ToString::to_string).unwrap_or_default();
            let mut mapped = row.clone();
            match inverse[t].get(&id) {
                Some(old) => mapped[0] = Val::Text(old.clone()),
                None => {
                    let was_old = old_ids.get(t).is_some_and(|s| s.contains(&id));
                    problems.push(RowProblem {
                        table: table.name.to_owned(),
                        row: id.clone(),
                        fault: RowFault::Extra,
                        detail: if was_old {
                            format!(
                                "{} row {id}: extra; it is site {old_site}'s own id, not \
                                 remapped",
                                table.name
                            )
                        } else {
                            format!(
                                "{} row {id}: extra; not the new id of any row site {old_site} \
                                 had at the restore point",
                                table.name
                            )
                        },
                    });
                }
            }
            if let Some(site) = mapped.get_mut(1) {
                *site = Val::Text(old_site.to_owned());
            }
            for &(col, parent, column) in &refs {
                let value = row.get(col).map(ToString::to_string).unwrap_or_default();
                if !live_ids[parent].contains(value.as_str()) {
                    let parent_name = tables[parent].name;
                    let why = if old_ids.get(parent).is_some_and(|s| s.contains(&value)) {
                        format!("it is site {old_site}'s {parent_name} id, not remapped")
                    } else if inverse[parent].contains_key(&value) {
                        format!("that {parent_name} row is missing")
                    } else {
                        format!("no {parent_name} row of this site has it")
                    };
                    problems.push(RowProblem {
                        table: table.name.to_owned(),
                        row: id.clone(),
                        fault: RowFault::DanglingReference,
                        detail: format!(
                            "{} row {id}: dangling reference {column} = {value} ({why})",
                            table.name
                        ),
                    });
                }
                if let Some(old) = inverse[parent].get(&value) {
                    mapped[col] = Val::Text(old.clone());
                }
            }
            digests[t].add(row_hash(table.name, &mapped));
        }
        for (new, old) in &inverse[t] {
            if !live_ids[t].contains(new.as_str()) {
                problems.push(RowProblem {
                    table: table.name.to_owned(),
                    row: new.clone(),
                    fault: RowFault::Missing,
                    detail: format!(
                        "{} row {new}: missing (site {old_site}'s row {old} at the restore point)",
                        table.name
                    ),
                });
            }
        }
    }
    (digests, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
    const NEW: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";
    const P: &str = "11111111-1111-4111-8111-111111111111";
    const I: &str = "22222222-2222-4222-8222-222222222222";
    const C: &str = "33333333-3333-4333-8333-333333333333";

    fn t(s: &str) -> Val {
        Val::Text(s.to_owned())
    }

    fn n(table: &str, old: &str) -> String {
        new_row_id(NEW, table, old).unwrap()
    }

    /// The old site's tracker rows, and the same rows as a correct restore as NEW writes them.
    fn tracker() -> (TableIds, TableRows, TableRows) {
        let old_rows: TableRows = vec![
            vec![vec![t(P), t(OLD), t("KEY"), t("Project"), t("2022-04-01T00:00:00Z")]],
            vec![vec![
                t(I),
                t(OLD),
                t(P),
                Val::Int(1),
                t("Title"),
                t("open"),
                t("Ann Lee"),
                t("2022-04-01T00:00:00Z"),
            ]],
            vec![vec![t(C), t(OLD), t(I), t("Bo"), t("Body"), t("2022-04-01T00:00:00Z")]],
        ];
        let ids: TableIds = vec![
            BTreeSet::from([P.to_owned()]),
            BTreeSet::from([I.to_owned()]),
            BTreeSet::from([C.to_owned()]),
        ];
        let mut new_rows = old_rows.clone();
        new_rows[0][0][0] = t(&n("projects", P));
        new_rows[1][0][0] = t(&n("issues", I));
        new_rows[1][0][2] = t(&n("projects", P));
        new_rows[2][0][0] = t(&n("comments", C));
        new_rows[2][0][2] = t(&n("issues", I));
        for table in &mut new_rows {
            for row in table {
                row[1] = t(NEW);
            }
        }
        (ids, old_rows, new_rows)
    }

    fn digests(kind: StoreKind, rows: &TableRows) -> Vec<SliceDigest> {
        kind.tables()
            .iter()
            .zip(rows)
            .map(|(table, rows)| {
                let mut d = SliceDigest::default();
                for r in rows {
                    d.add(row_hash(table.name, r));
                }
                d
            })
            .collect()
    }

    #[test]
    fn new_ids_follow_the_documented_rule() {
        // Any spelling of the old uuid gives the same new id; the table and the new site count.
        let a = new_row_id(NEW, "issues", I).unwrap();
        assert_eq!(new_row_id(NEW, "issues", &I.to_uppercase()), Some(a.clone()));
        assert_eq!(new_row_id(NEW, "issues", &I.replace('-', "")), Some(a.clone()));
        assert_ne!(new_row_id(NEW, "comments", I), Some(a.clone()));
        assert_ne!(new_row_id(OLD, "issues", I), Some(a.clone()));
        assert_eq!(new_row_id(NEW, "issues", "not-a-uuid"), None);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        assert_eq!(a, a.to_lowercase());
    }

    #[test]
    fn the_rule_agrees_with_the_restore_it_checks() {
        // Verify derives new ids from the documented rule, not by calling rewind-slice; both
        // must give the same id for a fixed vector.
        let old = uuid::Uuid::parse_str(I).unwrap();
        let restore = rewind_slice::remap::new_uuid_of(NEW, "comments", old);
        assert_eq!(new_row_id(NEW, "comments", I), Some(restore.hyphenated().to_string()));
        assert_eq!(NAMESPACE, rewind_slice::remap::NAMESPACE);
        assert_eq!(
            new_row_id(NEW, "comments", I).as_deref(),
            Some("ea4c0105-2ac0-5f2d-a2bc-8d0d3ad9b25d"),
            "the fixed vector"
        );
    }

    #[test]
    fn a_correct_restore_maps_back_to_the_old_state() {
        let (ids, old_rows, new_rows) = tracker();
        let (got, problems) = map_back(StoreKind::Tracker, NEW, OLD, &ids, &new_rows);
        assert_eq!(problems, []);
        assert_eq!(got, digests(StoreKind::Tracker, &old_rows));
    }

    #[test]
    fn extra_missing_and_dangling_rows_are_named() {
        let (ids, old_rows, mut new_rows) = tracker();
        // The comment still points at the old issue id (a reference the restore did not follow).
        new_rows[2][0][2] = t(I);
        let comment = n("comments", C);
        let (got, problems) = map_back(StoreKind::Tracker, NEW, OLD, &ids, &new_rows);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].fault, RowFault::DanglingReference);
        assert_eq!((problems[0].table.as_str(), problems[0].row.as_str()), ("comments", &*comment));
        assert!(problems[0].detail.contains("not remapped"), "{}", problems[0].detail);
        // Mapped back, the stale id even looks right: only the reference check catches it.
        assert_eq!(got, digests(StoreKind::Tracker, &old_rows));

        // An issue kept its old id: it is extra, its new id is missing, and the comment that
        // points at the new id dangles.
        let (_, _, mut new_rows) = tracker();
        new_rows[1][0][0] = t(I);
        let (_, problems) = map_back(StoreKind::Tracker, NEW, OLD, &ids, &new_rows);
        let faults: Vec<(&str, &RowFault)> =
            problems.iter().map(|p| (p.table.as_str(), &p.fault)).collect();
        assert_eq!(
            faults,
            [
                ("issues", &RowFault::Extra),
                ("issues", &RowFault::Missing),
                ("comments", &RowFault::DanglingReference)
            ]
        );
        assert!(problems[0].detail.contains("own id, not remapped"), "{}", problems[0].detail);
        assert!(problems[2].detail.contains("that issues row is missing"));

        // A row the old site never had.
        let (_, _, mut new_rows) = tracker();
        let mut extra = new_rows[2][0].clone();
        extra[0] = t("44444444-4444-4444-8444-444444444444");
        new_rows[2].push(extra);
        let (_, problems) = map_back(StoreKind::Tracker, NEW, OLD, &ids, &new_rows);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].fault, RowFault::Extra);
        assert!(problems[0].detail.contains("not the new id of any row"));
    }

    #[test]
    fn the_catalog_site_row_becomes_the_new_site() {
        let row = |id: &str, site: &str| {
            vec![
                t(id),
                t(site),
                t("https://x.example.net"),
                t(C),
                t("eu-west"),
                t("s01"),
                t("tracker"),
                t("free"),
                t("active"),
                t("2022-04-01T00:00:00Z"),
            ]
        };
        let ids: TableIds = vec![BTreeSet::from([OLD.to_owned()]), BTreeSet::new()];
        let old_rows: TableRows = vec![vec![row(OLD, OLD)], vec![]];
        let (got, problems) =
            map_back(StoreKind::Catalog, NEW, OLD, &ids, &vec![vec![row(NEW, NEW)], vec![]]);
        assert_eq!(problems, []);
        assert_eq!(got, digests(StoreKind::Catalog, &old_rows));
        // A site row that kept the old id under the new tenant column is caught.
        let (_, problems) =
            map_back(StoreKind::Catalog, NEW, OLD, &ids, &vec![vec![row(OLD, NEW)], vec![]]);
        let faults: Vec<&RowFault> = problems.iter().map(|p| &p.fault).collect();
        assert_eq!(faults, [&RowFault::Extra, &RowFault::Missing]);
    }
}
