//! Properties over random inputs: random valid workflows expand to acyclic plans whose ranks hold
//! along every edge; no input, however mangled, makes parsing or expansion panic, and every error
//! it gets names its file, line and column; a value rendered into a connection URL lands in its
//! component and nowhere else (or is refused); a redacted URL never shows its password.
//!
//! Case counts are modest here; `scripts/fuzz [CASES]` runs the same properties at depth
//! (`PROPTEST_CASES`, default 20000, release mode).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use rewind_model::{
    Diagnostics, Fill, Plan, Ref, RestorePoint, TargetSet, TargetsFormat, UrlRenderError,
    UrlTemplate, Workflow, redact_text, redact_url,
};
use url::Url;

/// `PROPTEST_CASES` when set (scripts/fuzz), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every diagnostic names one of `inputs` (file name, text) and a line and column inside it.
fn located(d: &Diagnostics, inputs: &[(&str, &str)]) -> Result<(), TestCaseError> {
    for diag in d.iter() {
        let text = inputs.iter().find(|(f, _)| *f == diag.location.file).map(|(_, t)| *t);
        let Some(text) = text else {
            return Err(TestCaseError::fail(format!("names no input file: {diag}")));
        };
        let lines = text.split('\n').count() as u32;
        prop_assert!(
            diag.location.line >= 1 && diag.location.line <= lines.max(1),
            "{diag} (of {lines} lines)"
        );
        prop_assert!(diag.location.column >= 1, "{diag}");
        prop_assert!(!diag.message.is_empty(), "{diag}");
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct GenStep {
    scope: u8,
    estimate_s: u32,
    needs: Vec<Index>,
    when: Option<u8>,
    pool: Option<u8>,
}

#[derive(Debug, Clone)]
struct GenTarget {
    a: u8,
    b: Vec<u8>,
    p: bool,
}

fn arb_step() -> impl Strategy<Value = GenStep> {
    (
        0u8..4,
        0u32..600,
        prop::collection::vec(any::<Index>(), 0..4),
        prop::option::of(0u8..3),
        prop::option::of(0u8..2),
    )
        .prop_map(|(scope, estimate_s, needs, when, pool)| GenStep {
            scope,
            estimate_s,
            needs,
            when,
            pool,
        })
}

fn arb_target() -> impl Strategy<Value = GenTarget> {
    (0u8..3, prop::collection::vec(0u8..3, 1..3), any::<bool>()).prop_map(|(a, b, p)| GenTarget {
        a,
        b,
        p,
    })
}

/// A valid workflow: every step needs only earlier steps, so there is no cycle.
fn workflow_text(steps: &[GenStep]) -> String {
    let mut out =
        String::from("name = \"prop\"\ntarget_kind = \"site\"\n[resources]\np0 = 1\np1 = 3\n");
    for (i, s) in steps.iter().enumerate() {
        let scope = ["run", "target", "group:a", "group:b"][s.scope as usize];
        let mut needs: Vec<usize> =
            if i == 0 { Vec::new() } else { s.needs.iter().map(|x| x.index(i)).collect() };
        needs.sort_unstable();
        needs.dedup();
        let needs: Vec<String> = needs.iter().map(|n| format!("\"s{n}\"")).collect();
        out.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nscope = \"{scope}\"\nneeds = [{}]\nestimate = \"{}s\"\naction = {{ kind = \"command\", program = \"x\" }}\n",
            needs.join(", "),
            s.estimate_s
        ));
        if let (Some(w), 1) = (s.when, s.scope) {
            out.push_str(&format!("when = {{ p = \"{}\" }}\n", ["yes", "no", "other"][w as usize]));
        }
        if let Some(p) = s.pool {
            out.push_str(&format!("resource = \"p{p}\"\n"));
        }
    }
    out
}

fn targets_text(targets: &[GenTarget]) -> String {
    let mut out = String::from("id,kind,a,b,p\n");
    for (i, t) in targets.iter().enumerate() {
        let b: Vec<String> = t.b.iter().map(|v| format!("b{v}")).collect();
        out.push_str(&format!(
            "00000000-0000-4000-8000-{i:012},site,a{},{},{}\n",
            t.a,
            b.join(";"),
            if t.p { "yes" } else { "no" }
        ));
    }
    out
}

fn rp() -> RestorePoint {
    "2022-04-05T07:33:00Z".parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn random_valid_workflows_expand_to_acyclic_plans_with_consistent_ranks(
        steps in prop::collection::vec(arb_step(), 1..12),
        targets in prop::collection::vec(arb_target(), 1..10),
    ) {
        let wf = Workflow::parse("w.toml", &workflow_text(&steps)).map_err(|d| TestCaseError::fail(d.to_string()))?;
        let ts = TargetSet::parse("t.csv", &targets_text(&targets), TargetsFormat::Csv).map_err(|d| TestCaseError::fail(d.to_string()))?;
        let plan = Plan::build(wf, ts, rp()).map_err(|d| TestCaseError::fail(d.to_string()))?;

        prop_assert!(!petgraph::algo::is_cyclic_directed(plan.graph()));
        let mut expected = 0;
        for (i, s) in plan.workflow().steps.iter().enumerate() {
            let n = plan.instances_of_step(i).len();
            expected += n;
            match s.scope {
                rewind_model::Scope::Run => prop_assert_eq!(n, 1),
                rewind_model::Scope::Target => prop_assert_eq!(n, targets.len()),
                rewind_model::Scope::Group(_) => prop_assert!((1..=3).contains(&n)),
            }
        }
        prop_assert_eq!(plan.len(), expected);

        for a in plan.ids() {
            if plan.instance(a).skipped {
                prop_assert_eq!(plan.dependencies(a).count() + plan.dependents(a).count(), 0);
                continue;
            }
            for b in plan.dependents(a) {
                prop_assert!(a < b, "edges go forward in id order");
                prop_assert!(!plan.instance(b).skipped);
                prop_assert!(plan.rank(a) >= plan.estimate(a) + plan.rank(b), "rank({}) < estimate + rank({})", plan.key(a), plan.key(b));
            }
            prop_assert!(plan.rank(a) >= plan.estimate(a));
        }

        let lb = plan.lower_bound();
        let max_rank = plan.ids().map(|i| plan.rank(i)).max().unwrap_or(Duration::ZERO);
        prop_assert_eq!(lb.critical_path, max_rank);
        prop_assert!(lb.makespan >= lb.critical_path);
        for (_, _, bound) in &lb.pools {
            prop_assert!(lb.makespan >= *bound);
        }
        let path = plan.critical_path();
        let total: Duration = path.iter().map(|&i| plan.estimate(i)).sum();
        prop_assert_eq!(total, lb.critical_path, "the critical path adds up to its length");
        for w in path.windows(2) {
            prop_assert!(plan.dependents(w[0]).any(|d| d == w[1]), "the critical path follows edges");
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(d) = Workflow::parse("w.toml", &text) { located(&d, &[("w.toml", &text)])?; }
        if let Err(d) = TargetSet::parse("t.csv", &text, TargetsFormat::Csv) { located(&d, &[("t.csv", &text)])?; }
        if let Err(d) = TargetSet::parse("t.jsonl", &text, TargetsFormat::JsonLines) { located(&d, &[("t.jsonl", &text)])?; }
        let _ = text.parse::<RestorePoint>();
    }

    #[test]
    fn mutated_workflows_and_targets_never_panic(
        edits in prop::collection::vec((any::<Index>(), 0u8..3, prop::sample::select(&[
            "[", "]", "{", "}", "\"", "=", ".", ",", "\n", "#", "{{", "}}", "[[steps]]", "needs", "group:", "0", "-1",
            "estimate = \"1x\"", "scope = \"run\"", "é", ";", "\0",
            "://", "@", ":", "?", "&", "=", "%", "${X}", "{{target.attr.a}}", "{{needs.x.y}}",
            "program = \"{{target.id}}\"", "password=", "\"sqlite://{{target.id}}\"", "[connections]",
            "\"id\":", "\"kind\"", "[\"a\"]", "null",
        ][..])), 1..6),
        which in 0usize..2,
    ) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let file = ["restore-2.toml", "restore-1.toml"][which];
        let mut text = std::fs::read_to_string(format!("{root}/workflows/{file}")).unwrap();
        let mut targets = std::fs::read_to_string(format!("{root}/examples/sites-883.csv")).unwrap();
        targets.truncate(targets.char_indices().nth(3000).map_or(targets.len(), |(i, _)| i));
        let mut jsonl = jsonl_of(&targets);
        for (at, op, piece) in &edits {
            for s in [&mut text, &mut targets, &mut jsonl] {
                let mut pos = at.index(s.len() + 1);
                while !s.is_char_boundary(pos) { pos -= 1; }
                match op {
                    0 => s.insert_str(pos, piece),
                    1 => { let end = (pos + piece.len()).min(s.len()); let end = (end..=s.len()).find(|&e| s.is_char_boundary(e)).unwrap_or(s.len()); s.replace_range(pos..end, ""); }
                    _ => { let end = (pos..=s.len()).find(|&e| e > pos && s.is_char_boundary(e)).unwrap_or(s.len()); s.replace_range(pos..end, piece); }
                }
            }
        }
        let inputs = [(file, text.as_str()), ("t.csv", targets.as_str()), ("t.jsonl", jsonl.as_str())];
        let wf = Workflow::parse(file, &text);
        if let Err(d) = &wf { located(d, &inputs)?; }
        for (name, body, format) in [("t.csv", &targets, TargetsFormat::Csv), ("t.jsonl", &jsonl, TargetsFormat::JsonLines)] {
            match TargetSet::parse(name, body, format) {
                Err(d) => located(&d, &inputs)?,
                Ok(ts) => if let Ok(wf) = &wf {
                    match Plan::build(wf.clone(), ts, rp()) {
                        Ok(plan) => { let _ = plan.summary(); }
                        Err(d) => located(&d, &inputs)?,
                    }
                },
            }
        }
    }

    #[test]
    fn random_connection_urls_parse_or_fail_located_and_render_without_panic(
        pieces in prop::collection::vec(prop::sample::select(&[
            "postgres://", "sqlite://", "sqlite:", "sandbox://", "mysql:", "//", "/", ":", "@", "?", "&", "=", "#",
            "[", "]", "::1", "u", "pw", "h", "5432", "db", ".", "..", "%", "%2F", "password", "pass=",
            "{{target.attr.a}}", "{{target.id}}", "{{run.id}}", "{{needs.x.out}}", "${PW}", "${DIR}",
            "{{", "}}", "${", "}", " ", "é", "\n",
        ][..]), 0..14),
        value in arb_value(),
    ) {
        let raw: String = pieces.concat();
        let text = format!(
            "name = \"u\"\ntarget_kind = \"site\"\n[connections]\nc = {}\n[[steps]]\nid = \"x\"\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"true\" }}\n[[steps]]\nid = \"s\"\nneeds = [\"x\"]\nestimate = \"1m\"\naction = {{ kind = \"sql\", connection = \"c\", sql = \"SELECT 1\" }}\n",
            serde_json::to_string(&raw).unwrap()
        );
        match Workflow::parse("w.toml", &text) {
            Err(d) => located(&d, &[("w.toml", &text)])?,
            Ok(wf) => {
                let _ = wf.connections[0].url.render(|r| match r {
                    Ref::Placeholder(_) => Ok::<_, ()>(Fill::Value(value.clone())),
                    Ref::Env(_) => Ok(Fill::Value(value.clone())),
                });
            }
        }
    }
}

/// The CSV targets as JSON Lines.
fn jsonl_of(csv: &str) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let mut out = String::new();
    for line in lines {
        let mut obj = serde_json::Map::new();
        for (k, v) in header.iter().zip(line.split(',')) {
            let v = if v.contains(';') {
                serde_json::Value::from(v.split(';').collect::<Vec<_>>())
            } else {
                serde_json::Value::from(v)
            };
            obj.insert((*k).to_owned(), v);
        }
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    out
}

// -------------------------------------------------------------------------------------------
// Connection URL templates

/// Characters that mean something in a URL, and some that mean something to its readers.
const URL_CHARS: &[char] = &[
    '@', ':', '/', '?', '#', '&', '=', '%', '[', ']', ' ', '\n', '\t', '.', '+', '\\', ';', ',',
    '\'', '"', '<', '>', '{', '}', '|', '^', '`', '$', '~', '!', '*', '(', ')', '\0', 'é', '😀',
    'a', '5',
];

/// Values written to break a URL's shape.
const NASTY: &[&str] = &[
    "",
    ".",
    "..",
    "./..",
    "../x",
    "a/../b",
    "//evil@host/db",
    "127.0.0.1:5432/other?x=",
    "evil@127.0.0.1:5432",
    "live?options=-csearch_path%3Devil",
    "/tmp/x/pwn?mode=rwc",
    "%2e%2e",
    "[::1]",
    "[0:0::1]",
    "[::ffff:1.2.3.4]",
    "[zz]",
    "::1",
    "0",
    "1",
    "65535",
    "65536",
    "05432",
    "+5432",
    "db-1.internal",
    "a b",
    "a+b",
    "a%20b",
    "%",
    "%zz",
    "x#y",
    "x&y=z",
    "é",
    "\u{feff}",
];

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![2 => any::<char>(), 3 => prop::sample::select(URL_CHARS)],
            0..24,
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
        1 => prop::sample::select(NASTY).prop_map(str::to_owned),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    User,
    Password,
    Host,
    Port,
    Database,
    QueryValue,
    Fragment,
    SqliteFile,
    SandboxValue,
}

/// A template per component, and a harmless value for it.
const TEMPLATES: &[(Where, &str, &str)] = &[
    (Where::User, "postgres://{{target.attr.v}}@db.example:5432/live?application_name=rw", "u"),
    (Where::Password, "postgres://u:{{target.attr.v}}@db.example:5432/live?sslmode=disable", "p"),
    (Where::Host, "postgres://u@{{target.attr.v}}:5432/live?sslmode=disable", "h"),
    (Where::Port, "postgres://u@db.example:{{target.attr.v}}/live?sslmode=disable", "1"),
    (Where::Database, "postgres://u@db.example:5432/{{target.attr.v}}?sslmode=disable", "d"),
    // (A placeholder may not be a query key: refused when the workflow is read.)
    (
        Where::QueryValue,
        "postgres://u@db.example:5432/live?application_name={{target.attr.v}}&sslmode=disable",
        "v",
    ),
    (Where::Fragment, "mysql://u@db.example:3306/live?ssl-mode=DISABLED#{{target.attr.v}}", "f"),
    (Where::SqliteFile, "sqlite:///srv/{{target.attr.v}}.sqlite?mode=ro", "f"),
    (Where::SandboxValue, "sandbox:///srv/demo?scratch=t1&store=tracker-{{target.attr.v}}", "s"),
];

fn render(t: &UrlTemplate, v: &str) -> Result<String, UrlRenderError<()>> {
    t.render(|r| match r {
        Ref::Placeholder(_) => Ok(Fill::Value(v.to_owned())),
        Ref::Env(_) => Err(()),
    })
}

/// `s` percent-decoded (lossily) as a query value is: independent of rewind's own decoder.
fn dec(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn is_host(v: &str) -> bool {
    match v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    }
}

fn is_port(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 5
        && v.bytes().all(|b| b.is_ascii_digit())
        && v.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
}

/// The keys of the query pairs, decoded.
fn keys(u: &Url) -> Vec<String> {
    u.query_pairs().map(|(k, _)| k.into_owned()).collect()
}

/// What sqlx-sqlite reads from `url` (`SqliteConnectOptions::from_str`): the file, percent-
/// decoded, and the query pairs.
fn sqlite_reading(url: &str) -> (String, Vec<(String, String)>) {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    let pairs = url::form_urlencoded::parse(params.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (dec(db), pairs)
}

fn check_url(w: Where, raw: &str, harmless: &str, v: &str) -> Result<(), TestCaseError> {
    let t = UrlTemplate::parse(raw).unwrap();
    let plain = render(&t, harmless).unwrap();
    let dots = |path: &str| path.split('/').any(|seg| seg == "." || seg == "..");
    let refusable = match w {
        Where::Host => !is_host(v),
        Where::Port => !is_port(v),
        Where::Database => v == "." || v == "..",
        Where::SqliteFile => dots(&format!("/srv/{v}.sqlite")),
        _ => false,
    };
    let out = match render(&t, v) {
        Err(UrlRenderError::Refused(r)) => {
            prop_assert!(refusable, "{raw} with {v:?} refused: {r}");
            prop_assert!(r.to_string().contains("{{target.attr.v}}"), "{r}");
            return Ok(());
        }
        Err(UrlRenderError::Value(())) => return Err(TestCaseError::fail("no value")),
        Ok(out) => out,
    };
    prop_assert!(!refusable, "{raw} with {v:?} rendered: {out}");
    let u = Url::parse(&out).map_err(|e| TestCaseError::fail(format!("{out}: {e}")))?;
    let p = Url::parse(&plain).unwrap();
    prop_assert_eq!(u.scheme(), p.scheme());
    match w {
        Where::SqliteFile => {
            // Read directly (the copy executor) and through the `Any` driver (a `Url` first).
            for seen in [out.as_str(), u.as_str()] {
                let (file, pairs) = sqlite_reading(seen);
                prop_assert_eq!(file, format!("/srv/{v}.sqlite"), "{}", seen);
                prop_assert_eq!(pairs, vec![("mode".to_owned(), "ro".to_owned())], "{}", seen);
            }
            return Ok(());
        }
        Where::SandboxValue => {
            prop_assert_eq!(u.path(), "/srv/demo");
            let pairs: Vec<(String, String)> =
                u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            prop_assert_eq!(
                pairs,
                vec![
                    ("scratch".to_owned(), "t1".to_owned()),
                    ("store".to_owned(), format!("tracker-{v}"))
                ]
            );
            // rewind's own decoder (the sandbox resolver's) reads the same value.
            let encoded = out
                .strip_prefix("sandbox:///srv/demo?scratch=t1&store=tracker-")
                .unwrap_or_default();
            let decoded = rewind_model::percent_decode(encoded);
            prop_assert_eq!(decoded.as_deref(), Some(v));
            return Ok(());
        }
        _ => {}
    }
    if w == Where::User {
        prop_assert_eq!(dec(u.username()), v);
    } else {
        prop_assert_eq!(u.username(), p.username());
    }
    if w == Where::Password {
        prop_assert_eq!(dec(u.password().unwrap_or("")), v);
    } else {
        prop_assert_eq!(u.password(), p.password());
    }
    if w == Where::Host {
        let host = u.host_str().unwrap_or("");
        match (host.strip_prefix('['), v.strip_prefix('[')) {
            (Some(h), Some(want)) => prop_assert_eq!(
                h.trim_end_matches(']').parse::<std::net::Ipv6Addr>().ok(),
                want.trim_end_matches(']').parse::<std::net::Ipv6Addr>().ok()
            ),
            _ => prop_assert_eq!(host, v),
        }
    } else {
        prop_assert_eq!(u.host_str(), p.host_str());
    }
    if w == Where::Port {
        prop_assert_eq!(u.port(), v.parse::<u16>().ok());
    } else {
        prop_assert_eq!(u.port(), p.port());
    }
    if w == Where::Database {
        // sqlx: the path without its leading `/`s, percent-decoded.
        prop_assert_eq!(dec(u.path().trim_start_matches('/')), v);
    } else {
        prop_assert_eq!(u.path(), p.path());
    }
    prop_assert_eq!(keys(&u), keys(&p));
    if w == Where::QueryValue {
        prop_assert_eq!(u.query_pairs().next().map(|(_, x)| x.into_owned()), Some(v.to_owned()));
    }
    if w == Where::Fragment {
        prop_assert_eq!(dec(u.fragment().unwrap_or("")), v);
    } else {
        prop_assert_eq!(u.fragment(), p.fragment());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1000), ..ProptestConfig::default() })]

    #[test]
    fn a_url_value_lands_in_its_component_and_nowhere_else(which in 0..TEMPLATES.len(), v in arb_value()) {
        let (w, raw, harmless) = TEMPLATES[which];
        check_url(w, raw, harmless, &v)?;
    }

    #[test]
    fn a_redacted_url_never_shows_its_password(
        pw in prop::collection::vec(prop_oneof![2 => any::<char>(), 3 => prop::sample::select(URL_CHARS)], 4..24)
            .prop_map(|v| v.into_iter().collect::<String>()),
        scheme in prop::sample::select(&["postgres", "postgresql", "mysql", "sandbox", "x-db+tls"][..]),
        in_query in any::<bool>(),
        key in prop::sample::select(&["password", "PASSWORD", "pass", "pwd", "sslpassword", "Pass%77ord"][..]),
    ) {
        // In a query a password is one value only with its `%` and `&` escaped (unescaped, a
        // driver reads less of it, and the rest as other parameters); in the userinfo it is
        // written as it is, `@`, `/`, `?` and `#` included.
        let pw = if in_query { pw.replace('%', "%25").replace('&', "%26") } else { pw };
        let url = if in_query {
            format!("{scheme}://user@host:5432/db?sslmode=disable&{key}={pw}")
        } else {
            format!("{scheme}://user:{pw}@host:5432/db?sslmode=disable")
        };
        let rest = url.replacen(&pw, "", 1);
        if rest.contains(&pw) {
            return Ok(());
        }
        let out = redact_url(&url);
        prop_assert!(!out.contains(&pw), "{url} -> {out}");
        if !pw.contains(char::is_whitespace) {
            let msg = redact_text(&format!("cannot connect to `{url}`: connection refused\nnext"));
            prop_assert!(!msg.contains(&pw), "{url} -> {msg}");
        }
    }
}
