//! Rendered connection URLs as sqlx reads them: a value placed in a user name, a database name,
//! a query value or a SQLite file path arrives exactly, and the host and port stay the
//! workflow's. `scripts/fuzz` runs these at depth.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;
use std::str::FromStr;

use proptest::prelude::*;
use rewind_model::{Fill, Ref, UrlRenderError, UrlTemplate};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn render(raw: &str, v: &str) -> Result<String, UrlRenderError<()>> {
    UrlTemplate::parse(raw).unwrap().render(|r| match r {
        Ref::Placeholder(_) => Ok(Fill::Value(v.to_owned())),
        Ref::Env(_) => Err(()),
    })
}

/// Any text, weighted towards what means something in a URL.
fn arb_value() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '@', ':', '/', '?', '#', '&', '=', '%', '[', ']', ' ', '\n', '.', '+', '\\', ';', '\'',
        '"', '\0', 'é', '😀',
    ]);
    prop::collection::vec(prop_oneof![2 => any::<char>(), 3 => special], 1..24)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn postgres_reads_each_value_exactly_where_it_was_put(v in arb_value()) {
        let url = render("postgres://{{target.attr.v}}@db.example:6543/{{target.attr.v}}?application_name={{target.attr.v}}&sslmode=disable", &v);
        // A database name that is `.` or `..` is refused (a URL parser would drop it).
        if v == "." || v == ".." {
            prop_assert!(matches!(url, Err(UrlRenderError::Refused(_))));
            return Ok(());
        }
        let url = url.unwrap();
        let o = PgConnectOptions::from_str(&url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
        prop_assert_eq!(o.get_host(), "db.example");
        prop_assert_eq!(o.get_port(), 6543);
        prop_assert_eq!(o.get_username(), v.as_str());
        prop_assert_eq!(o.get_database(), Some(v.as_str()));
        prop_assert_eq!(o.get_application_name(), Some(v.as_str()));
        prop_assert!(o.get_options().is_none(), "no `options` smuggled in: {}", url);
    }

    #[test]
    fn sqlite_reads_the_file_exactly_and_no_option(v in arb_value()) {
        let url = render("sqlite:///srv/rewind/{{target.attr.v}}.sqlite", &v);
        let file = format!("/srv/rewind/{v}.sqlite");
        if file.split('/').any(|s| s == "." || s == "..") {
            prop_assert!(matches!(url, Err(UrlRenderError::Refused(_))));
            return Ok(());
        }
        let url = url.unwrap();
        let o = SqliteConnectOptions::from_str(&url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
        prop_assert_eq!(o.get_filename(), Path::new(&file));
    }
}
