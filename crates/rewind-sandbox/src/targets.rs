//! The targets file of a set of sites, as `rewind plan` and `rewind run` read it (DESIGN.md
//! "Targets file"): `id,kind,region,shard,products`, kind `site`, products `tracker`, `wiki` or
//! `tracker;wiki`.

use serde_json::json;

use crate::manifest::Site;

/// The CSV targets file.
pub fn csv(sites: &[Site]) -> String {
    let mut out = String::from("id,kind,region,shard,products\n");
    for s in sites {
        out.push_str(&format!("{},site,{},{},{}\n", s.id, s.region, s.shard, s.products.join(";")));
    }
    out
}

/// The JSON Lines targets file.
pub fn jsonl(sites: &[Site]) -> String {
    let mut out = String::new();
    for s in sites {
        let line = json!({
            "id": s.id, "kind": "site", "region": s.region, "shard": s.shard, "products": s.products,
        });
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
        let set = TargetSet::parse("t.jsonl", &jsonl(&[site]), TargetsFormat::JsonLines).unwrap();
        assert_eq!(set.len(), 1);
    }
}
