//! The targets file of a set of sites, as `rewind plan` and `rewind run` read it (DESIGN.md
//! "Targets file"): `id,kind,region,shard,products`, kind `site`, products `tracker`, `wiki` or
//! `tracker;wiki`; with new ids (`sites --as-new`), a last column `new_id`: the id each site is
//! restored as (Restore 1), and the map `verify --remapped` reads.

use rewind_model::TargetId;
use serde_json::json;

use crate::manifest::Site;

/// The CSV targets file.
pub fn csv(sites: &[Site]) -> String {
    csv_with(sites, None)
}

/// The CSV targets file, with a `new_id` column when `new_ids` (one per site) are given.
pub fn csv_with(sites: &[Site], new_ids: Option<&[TargetId]>) -> String {
    let mut out = String::from("id,kind,region,shard,products");
    out.push_str(if new_ids.is_some() { ",new_id\n" } else { "\n" });
    for (i, s) in sites.iter().enumerate() {
        out.push_str(&format!("{},site,{},{},{}", s.id, s.region, s.shard, s.products.join(";")));
        if let Some(n) = new_ids.and_then(|n| n.get(i)) {
            out.push_str(&format!(",{n}"));
        }
        out.push('\n');
    }
    out
}

/// The JSON Lines targets file.
pub fn jsonl(sites: &[Site]) -> String {
    jsonl_with(sites, None)
}

/// The JSON Lines targets file, with a `new_id` attribute when `new_ids` are given.
pub fn jsonl_with(sites: &[Site], new_ids: Option<&[TargetId]>) -> String {
    let mut out = String::new();
    for (i, s) in sites.iter().enumerate() {
        let mut line = json!({
            "id": s.id, "kind": "site", "region": s.region, "shard": s.shard, "products": s.products,
        });
        if let (Some(n), Some(obj)) = (new_ids.and_then(|n| n.get(i)), line.as_object_mut()) {
            obj.insert("new_id".to_owned(), json!(n));
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_model::{TargetSet, TargetsFormat};

    #[test]
    fn targets_files_parse_as_the_model_reads_them() {
        let site = Site {
            id: "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap(),
            url: "https://x.example.net".into(),
            region: "eu-west".into(),
            shard: "s03".into(),
            products: vec!["tracker".into(), "wiki".into()],
        };
        let text = csv(std::slice::from_ref(&site));
        assert_eq!(
            text,
            "id,kind,region,shard,products\n6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b,site,eu-west,s03,\
             tracker;wiki\n"
        );
        let set = TargetSet::parse("t.csv", &text, TargetsFormat::Csv).unwrap();
        assert_eq!(set.len(), 1);
        let set = TargetSet::parse(
            "t.jsonl",
            &jsonl(std::slice::from_ref(&site)),
            TargetsFormat::JsonLines,
        )
        .unwrap();
        assert_eq!(set.len(), 1);
        let new: TargetId = "0f0e0d0c-0b0a-4908-8706-050403020100".parse().unwrap();
        let text = csv_with(std::slice::from_ref(&site), Some(&[new]));
        assert!(text.starts_with("id,kind,region,shard,products,new_id\n"), "{text}");
        assert!(text.ends_with(",tracker;wiki,0f0e0d0c-0b0a-4908-8706-050403020100\n"), "{text}");
        for set in [
            TargetSet::parse("t.csv", &text, TargetsFormat::Csv).unwrap(),
            TargetSet::parse(
                "t.jsonl",
                &jsonl_with(&[site], Some(&[new])),
                TargetsFormat::JsonLines,
            )
            .unwrap(),
        ] {
            let t = &set.targets()[0];
            let got = t.attrs.iter().find(|(k, _)| k.as_str() == "new_id").unwrap().1.to_string();
            assert_eq!(got, new.to_string());
        }
    }
}
