//! Every workflow validation error, pinned with its kind, location, step and message.
//! One helper, many small cases.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use rewind_model::{Diagnostics, ErrorKind as K, Policy, Workflow};

const HEADER: &str = r#"name = "t"
target_kind = "site"

[resources]
api = 2

[connections]
catalog = "sqlite://catalog.db"
"#;

fn with_header(steps: &str) -> String {
    format!("{HEADER}\n{steps}")
}

/// 1-based line of the first occurrence of `marker` in `text`.
fn line_of(text: &str, marker: &str) -> u32 {
    let at = text.find(marker).unwrap_or_else(|| panic!("marker {marker:?} not in the text"));
    text[..at].matches('\n').count() as u32 + 1
}

/// Asserts that parsing `text` fails with a diagnostic of `kind`, on the line of `at`, for
/// `step`, whose message contains `needle`.
#[track_caller]
fn check(text: &str, kind: K, at: &str, step: Option<&str>, needle: &str) {
    let diags = Workflow::parse("w.toml", text).expect_err("the workflow should be refused");
    let line = line_of(text, at);
    let hit = diags.iter().any(|d| {
        d.kind == kind
            && d.location.line == line
            && d.location.file == "w.toml"
            && d.step.as_ref().map(|s| s.as_str()) == step
            && d.message.contains(needle)
    });
    assert!(
        hit,
        "expected {kind:?} on line {line} (step {step:?}) containing {needle:?}; got:\n{diags}"
    );
}

/// A step with all required keys, plus `extra` lines.
fn step(id: &str, extra: &str) -> String {
    format!(
        "[[steps]]\nid = \"{id}\"\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"true\" }}\n{extra}\n"
    )
}

#[test]
fn a_valid_workflow_parses_with_defaults_applied() {
    let text = with_header(&format!(
        "{}{}",
        step("a", "scope = \"run\""),
        step("b", "needs = [\"a\"]\nretries = 5\nbackoff = { max = \"1m\" }")
    ));
    let wf = Workflow::parse("w.toml", &text).unwrap();
    assert_eq!(wf.steps.len(), 2);
    assert_eq!(wf.steps[0].policy, Policy::BUILT_IN);
    let b = &wf.steps[1];
    assert_eq!(b.policy.retries, 5);
    assert_eq!(b.policy.backoff.max, std::time::Duration::from_secs(60));
    assert_eq!(
        b.policy.backoff.initial,
        Policy::BUILT_IN.backoff.initial,
        "unset keys keep defaults"
    );
    assert_eq!(b.line, line_of(&text, "id = \"b\"") - 1);
}

#[test]
fn step_overrides_merge_over_workflow_defaults() {
    let text = format!(
        "{HEADER}\n[defaults]\ntimeout = \"10m\"\nretries = 0\nbackoff = {{ initial = \"1s\", factor = 3, jitter = false }}\n\n{}",
        step("a", "timeout = \"1h\"")
    );
    let wf = Workflow::parse("w.toml", &text).unwrap();
    let p = wf.steps[0].policy;
    assert_eq!(p.timeout, std::time::Duration::from_secs(3600));
    assert_eq!(p.retries, 0);
    assert_eq!(p.backoff.factor, 3.0);
    assert!(!p.backoff.jitter);
    assert_eq!(p.backoff.initial, std::time::Duration::from_secs(1));
}

#[test]
fn toml_syntax_error_is_located() {
    let text = with_header("[[steps]]\nid = \"a\nestimate = \"1m\"\n");
    check(&text, K::Syntax, "id = \"a", None, "");
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    let text = format!("descripton = \"x\"\n{}", with_header(&step("a", "")));
    check(
        &text,
        K::UnknownKey,
        "descripton",
        None,
        "unknown key `descripton` in the workflow (did you mean `description`?)",
    );
}

#[test]
fn unknown_step_key_is_an_error_not_ignored() {
    let text = with_header(&step("a", "retrys = 3"));
    check(
        &text,
        K::UnknownKey,
        "retrys",
        Some("a"),
        "unknown key `retrys` in step (did you mean `retries`?)",
    );
}

#[test]
fn unknown_key_in_defaults_backoff_and_action() {
    check(
        &format!("{HEADER}\n[defaults]\ntimout = \"1m\"\n{}", step("a", "")),
        K::UnknownKey,
        "timout",
        None,
        "did you mean `timeout`?",
    );
    check(
        &with_header(&step("a", "backoff = { inital = \"1s\" }")),
        K::UnknownKey,
        "inital",
        Some("a"),
        "did you mean `initial`?",
    );
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"x\", argz = [] }\n",
    );
    check(
        &text,
        K::UnknownKey,
        "argz",
        Some("a"),
        "unknown key `argz` in a command action (did you mean `args`?)",
    );
}

#[test]
fn missing_required_keys() {
    check(
        "target_kind = \"site\"\n[[steps]]\nid = \"a\"\n",
        K::MissingKey,
        "target_kind",
        None,
        "has no `name`",
    );
    check("name = \"x\"\n", K::MissingKey, "name", None, "has no `target_kind`");
    check("name = \"x\"\ntarget_kind = \"site\"\n", K::MissingKey, "name", None, "no steps");
    check(
        &with_header("[[steps]]\nestimate = \"1m\"\n"),
        K::MissingKey,
        "[[steps]]",
        None,
        "step has no `id`",
    );
    check(
        &with_header("[[steps]]\nid = \"a\"\naction = { kind = \"command\", program = \"x\" }\n"),
        K::MissingKey,
        "[[steps]]",
        Some("a"),
        "no `estimate`",
    );
    check(
        &with_header("[[steps]]\nid = \"a\"\nestimate = \"1m\"\n"),
        K::MissingKey,
        "[[steps]]",
        Some("a"),
        "no `action`",
    );
    check(
        &with_header("[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { program = \"x\" }\n"),
        K::MissingKey,
        "action =",
        Some("a"),
        "action has no `kind`",
    );
}

#[test]
fn wrong_types_name_the_key_and_both_types() {
    check(
        &with_header(&step("a", "retries = \"two\"")),
        K::InvalidType,
        "\"two\"",
        Some("a"),
        "`retries` must be an integer, not a string",
    );
    check(
        &with_header(&step("a", "needs = \"b\"")),
        K::InvalidType,
        "needs =",
        Some("a"),
        "`needs` must be an array of strings",
    );
    check(
        &with_header(&step("a", "timeout = 30")),
        K::InvalidType,
        "timeout = 30",
        Some("a"),
        "duration string",
    );
}

#[test]
fn duplicate_step_ids() {
    let text = with_header(&format!("{}{}", step("a", ""), step("a", "")));
    let second = text.rfind("id = \"a\"").unwrap();
    let diags = Workflow::parse("w.toml", &text).unwrap_err();
    let d = diags.iter().find(|d| d.kind == K::DuplicateStep).expect("duplicate reported");
    assert_eq!(d.location.line, text[..second].matches('\n').count() as u32 + 1);
    assert!(
        d.message.contains(&format!("first defined on line {}", line_of(&text, "id = \"a\""))),
        "{d}"
    );
}

#[test]
fn unknown_need_suggests_a_close_step() {
    let text = with_header(&format!(
        "{}{}",
        step("catalog.undelete", ""),
        step("b", "needs = [\"catalog.undelte\"]")
    ));
    check(
        &text,
        K::UnknownNeed,
        "\"catalog.undelte\"",
        Some("b"),
        "needs unknown step `catalog.undelte` (did you mean `catalog.undelete`?)",
    );
}

#[test]
fn duplicate_and_self_needs() {
    let text = with_header(&format!("{}{}", step("a", ""), step("b", "needs = [\"a\", \"a\"]")));
    check(&text, K::DuplicateNeed, "needs = [\"a\", \"a\"]", Some("b"), "`a` appears twice");
    check(
        &with_header(&step("a", "needs = [\"a\"]")),
        K::Cycle,
        "needs = [\"a\"]",
        Some("a"),
        "needs itself",
    );
}

#[test]
fn cycles_print_their_path() {
    let text = with_header(&format!(
        "{}{}{}{}",
        step("a", "needs = [\"c\"]"),
        step("b", "needs = [\"a\"]"),
        step("c", "needs = [\"b\"]"),
        step("d", "needs = [\"a\"]"),
    ));
    check(&text, K::Cycle, "needs = [\"c\"]", Some("a"), "dependency cycle: a → c → b → a");
}

#[test]
fn resources_must_exist_and_have_capacity() {
    check(
        &with_header(&step("a", "resource = \"apii\"")),
        K::UnknownResource,
        "resource = \"apii\"",
        Some("a"),
        "unknown resource `apii` (did you mean `api`?); [resources] declares: api",
    );
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n[resources]\ndb = 0\nneg = -1\n{}",
        step("a", "")
    );
    check(&text, K::InvalidCapacity, "db = 0", None, "resource `db` has capacity 0");
    check(&text, K::InvalidCapacity, "neg = -1", None, "capacity -1");
    let text =
        format!("name = \"t\"\ntarget_kind = \"site\"\n[resources]\nDB = 1\n{}", step("a", ""));
    check(&text, K::InvalidId, "DB = 1", None, "resource name \"DB\" is not valid");
}

#[test]
fn bad_durations() {
    check(
        &with_header(
            "[[steps]]\nid = \"a\"\nestimate = \"5 parsecs\"\naction = { kind = \"command\", program = \"x\" }\n",
        ),
        K::InvalidDuration,
        "5 parsecs",
        Some("a"),
        "`estimate` = \"5 parsecs\" is not a duration",
    );
    check(
        &with_header(&step("a", "timeout = \"0s\"")),
        K::InvalidValue,
        "timeout = \"0s\"",
        Some("a"),
        "longer than zero",
    );
    check(
        &with_header(&step("a", "backoff = { initial = \"1m\", max = \"1s\" }")),
        K::InvalidValue,
        "backoff = {",
        Some("a"),
        "shorter than `initial`",
    );
    check(
        &with_header(&step("a", "backoff = { factor = 0.5 }")),
        K::InvalidValue,
        "factor = 0.5",
        Some("a"),
        "between 1 and 100",
    );
    check(
        &with_header(&step("a", "retries = -1")),
        K::InvalidValue,
        "retries = -1",
        Some("a"),
        "between 0 and 1000",
    );
}

#[test]
fn bad_ids_and_kinds() {
    check(
        &with_header(&step("Catalog.Undelete", "")),
        K::InvalidId,
        "Catalog.Undelete",
        None,
        "step id \"Catalog.Undelete\" is not valid",
    );
    check(
        &with_header(&step("a", "needs = [\"B\"]")),
        K::InvalidId,
        "needs = [\"B\"]",
        Some("a"),
        "in `needs`",
    );
    let text = format!("name = \"t\"\ntarget_kind = \"Site\"\n{}", step("a", ""));
    check(&text, K::InvalidId, "target_kind", None, "target kind \"Site\" is not valid");
}

#[test]
fn bad_scopes() {
    check(
        &with_header(&step("a", "scope = \"grup:shard\"")),
        K::InvalidScope,
        "grup:shard",
        Some("a"),
        "is not one of \"run\", \"target\" or \"group:<attribute>\"",
    );
    check(
        &with_header(&step("a", "scope = \"targt\"")),
        K::InvalidScope,
        "targt",
        Some("a"),
        "did you mean `target`?",
    );
    check(
        &with_header(&step("a", "scope = \"group:\"")),
        K::InvalidScope,
        "group:",
        Some("a"),
        "attribute name \"\" is not valid",
    );
}

#[test]
fn unknown_action_kind() {
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"shell\", program = \"x\" }\n",
    );
    check(
        &text,
        K::UnknownAction,
        "\"shell\"",
        Some("a"),
        "unknown action kind `shell`; known kinds: command, sql",
    );
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"comand\", program = \"x\" }\n",
    );
    check(&text, K::UnknownAction, "\"comand\"", Some("a"), "did you mean `command`?");
}

fn cmd_step(id: &str, scope: &str, needs: &str, arg: &str) -> String {
    format!(
        "[[steps]]\nid = \"{id}\"\nscope = \"{scope}\"\nneeds = [{needs}]\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"x\", args = [\"{arg}\"] }}\n"
    )
}

#[test]
fn templates_that_cannot_resolve() {
    check(
        &with_header(&cmd_step("a", "target", "", "{{target.nonsense}}")),
        K::UnresolvedTemplate,
        "{{target.nonsense}}",
        Some("a"),
        "unknown placeholder `{{target.nonsense}}`",
    );
    check(
        &with_header(&cmd_step("a", "target", "", "{{target.id")),
        K::UnresolvedTemplate,
        "{{target.id",
        Some("a"),
        "unclosed",
    );
    check(
        &with_header(&cmd_step("a", "run", "", "{{target.id}}")),
        K::UnresolvedTemplate,
        "{{target.id}}",
        Some("a"),
        "cannot resolve in a run-scope step",
    );
    check(
        &with_header(&cmd_step("a", "group:shard", "", "{{target.attr.shard}}")),
        K::UnresolvedTemplate,
        "{{target.attr.shard}}",
        Some("a"),
        "use `{{group.value}}`",
    );
    check(
        &with_header(&cmd_step("a", "target", "", "{{group.value}}")),
        K::UnresolvedTemplate,
        "{{group.value}}",
        Some("a"),
        "belongs to group: scopes",
    );
}

#[test]
fn needs_templates_must_read_a_unique_dependency() {
    let text = with_header(&format!(
        "{}{}",
        step("x", ""),
        cmd_step("a", "target", "", "{{needs.x.url}}")
    ));
    check(
        &text,
        K::UnresolvedTemplate,
        "{{needs.x.url}}",
        Some("a"),
        "reads step `x`, which is not in this step's `needs`",
    );
    let text = with_header(&cmd_step("a", "target", "", "{{needs.nope.url}}"));
    check(
        &text,
        K::UnresolvedTemplate,
        "{{needs.nope.url}}",
        Some("a"),
        "reads unknown step `nope`",
    );
    let text = with_header(&format!(
        "{}{}",
        step("x", ""),
        cmd_step("a", "run", "\"x\"", "{{needs.x.url}}")
    ));
    check(
        &text,
        K::UnresolvedTemplate,
        "{{needs.x.url}}",
        Some("a"),
        "is ambiguous: a run-scope step depends on many instances of `x`",
    );
    // A dotted step id reads fine: the key is the last segment.
    let text = with_header(&format!(
        "{}{}",
        step("catalog.undelete", ""),
        cmd_step("a", "target", "\"catalog.undelete\"", "{{needs.catalog.undelete.url}}")
    ));
    assert!(Workflow::parse("w.toml", &text).is_ok());
}

#[test]
fn templates_in_sql_text_are_refused() {
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"sql\", connection = \"catalog\", sql = \"DELETE FROM sites WHERE id = '{{target.id}}'\" }\n",
    );
    check(
        &text,
        K::TemplateInSql,
        "DELETE FROM",
        Some("a"),
        "`{{target.id}}` inside SQL text: values must be bound, never spliced",
    );
    let ok = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"sql\", connection = \"catalog\", sql = \"UPDATE sites SET status = 'active' WHERE id = ?\", params = [\"{{target.id}}\"] }\n",
    );
    assert!(Workflow::parse("w.toml", &ok).is_ok());
}

#[test]
fn program_never_comes_from_targets_or_outputs() {
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"{{target.attr.tool}}\", args = [\"{{target.id}}\"] }\n",
    );
    check(
        &text,
        K::TemplateInProgram,
        "program = \"{{target.attr.tool}}\"",
        Some("a"),
        "`program` must not be built from `{{target.attr.tool}}`: the program comes from the workflow, never from targets or outputs; pass values as `args`",
    );
    let text = with_header(&format!(
        "{}[[steps]]\nid = \"b\"\nneeds = [\"x\"]\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"bin/{{{{needs.x.tool}}}}\" }}\n",
        step("x", "")
    ));
    check(&text, K::TemplateInProgram, "bin/{{needs", Some("b"), "`{{needs.x.tool}}`");
    let preflight = format!(
        "{HEADER}\n[preflight]\naction = {{ kind = \"command\", program = \"{{{{run.restore_point}}}}\" }}\n\n{}",
        step("a", "")
    );
    check(
        &preflight,
        K::TemplateInProgram,
        "program = \"{{run",
        None,
        "`program` must not be built",
    );
    // The operator's own environment may name the program (`${REWIND_EXE}`).
    let ok = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"${REWIND_EXE}\", args = [\"{{target.attr.tool}}\"] }\n",
    );
    assert!(Workflow::parse("w.toml", &ok).is_ok());
}

#[test]
fn connection_urls_hold_no_literal_password() {
    let conn = |url: &str| {
        format!(
            "name = \"t\"\ntarget_kind = \"site\"\n\n[connections]\ntracker = \"{url}\"\n\n{}",
            step("a", "")
        )
    };
    for url in [
        "postgres://rewind:s3cr@tPW@db/live",
        "postgres://rewind:x${PW}@db/live",
        "postgres://db/live?sslmode=disable&password=hunter2",
        "mysql://db/live?PWD=hunter2",
    ] {
        check(
            &conn(url),
            K::LiteralSecret,
            "tracker =",
            None,
            "connection `tracker`: the URL holds a literal",
        );
    }
    let text = conn("postgres://rewind:s3cret@db/live");
    let diags = Workflow::parse("w.toml", &text).unwrap_err();
    let shown = diags.to_string();
    assert!(
        shown.contains("w.toml:5:11: error[literal-secret]: connection `tracker`: the URL holds a literal password; write it as ${VAR} (read from the environment at run time) so it is never stored or printed"),
        "{shown}"
    );
    check(
        &conn("postgres://rewind:{{target.attr.pw}}@db/live"),
        K::LiteralSecret,
        "tracker =",
        None,
        "password comes from `{{target.attr.pw}}`",
    );
    for url in [
        "postgres://rewind:${PW}@db/live",
        "postgres://rewind@db/live?password=${PW}",
        "postgres://rewind@db/live",
        "sqlite:///srv/a:b@c.sqlite",
    ] {
        assert!(Workflow::parse("w.toml", &conn(url)).is_ok(), "{url}");
    }
}

#[test]
fn a_placeholder_may_not_decide_a_urls_scheme() {
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n\n[connections]\nscratch = \"{{{{target.attr.url}}}}\"\n\n{}",
        step("a", "")
    );
    check(
        &text,
        K::TemplateInScheme,
        "scratch =",
        None,
        "connection `scratch`: `{{target.attr.url}}` would decide the URL's scheme",
    );
}

#[test]
fn a_placeholder_may_not_name_a_query_parameter() {
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n\n[connections]\nscratch = \"postgres://h/db?{{{{target.attr.k}}}}=x\"\n\n{}",
        step("a", "")
    );
    check(
        &text,
        K::TemplateInQueryKey,
        "scratch =",
        None,
        "connection `scratch`: `{{target.attr.k}}` would decide a query parameter's name",
    );
}

#[test]
fn sql_connections_must_be_declared() {
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"sql\", connection = \"catalgo\", sql = \"SELECT 1\" }\n",
    );
    check(
        &text,
        K::UnknownConnection,
        "\"catalgo\"",
        Some("a"),
        "unknown connection `catalgo` (did you mean `catalog`?)",
    );
}

#[test]
fn when_applies_to_target_scope_only() {
    check(
        &with_header(&step("a", "scope = \"run\"\nwhen = { products = \"tracker\" }")),
        K::InvalidWhen,
        "when =",
        Some("a"),
        "target-scope steps only",
    );
    check(&with_header(&step("a", "when = {}")), K::InvalidWhen, "when =", Some("a"), "is empty");
    check(
        &with_header(&step("a", "when = { products = 3 }")),
        K::InvalidType,
        "products = 3",
        Some("a"),
        "`when.products` must be a string",
    );
}

#[test]
fn rewind_environment_is_reserved() {
    let text = with_header(
        "[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"x\", env = { REWIND_STEP = \"y\" } }\n",
    );
    check(&text, K::InvalidValue, "REWIND_STEP", Some("a"), "set by rewind itself");
}

#[test]
fn several_errors_are_reported_together_in_file_order() {
    let text = with_header(&format!(
        "{}{}{}",
        step("a", "retrys = 1"),
        step("b", "needs = [\"zz\"]\nresource = \"nope\""),
        "[[steps]]\nid = \"c\"\nestimate = \"soon\"\naction = { kind = \"shell\" }\n",
    ));
    let diags: Diagnostics = Workflow::parse("w.toml", &text).unwrap_err();
    let kinds: Vec<K> = diags.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [K::UnknownKey, K::UnknownNeed, K::UnknownResource, K::InvalidDuration, K::UnknownAction],
        "{diags}"
    );
    let lines: Vec<u32> = diags.iter().map(|d| d.location.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "sorted by line: {lines:?}");
    // Display: file:line:col: error[code]: step `id`: message
    let first = diags.iter().next().unwrap().to_string();
    assert!(
        first.starts_with(&format!(
            "w.toml:{}:1: error[unknown-key]: step `a`: unknown key `retrys`",
            line_of(&text, "retrys")
        )),
        "{first}"
    );
}

#[test]
fn a_step_with_other_mistakes_is_still_known_to_its_dependents() {
    // `a` has a bad estimate; `b` needs `a`: only the estimate is reported, not an unknown need.
    let text = with_header(&format!(
        "{}{}",
        "[[steps]]\nid = \"a\"\nestimate = \"soon\"\naction = { kind = \"command\", program = \"x\" }\n",
        step("b", "needs = [\"a\"]"),
    ));
    let diags = Workflow::parse("w.toml", &text).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags}");
    assert!(diags.has(K::InvalidDuration));
}

#[test]
fn the_shipped_workflows_are_valid() {
    for (file, min_steps) in [("restore-2.toml", 30), ("restore-1.toml", 40)] {
        let path = format!("{}/../../workflows/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let wf = Workflow::parse(file, &text).unwrap_or_else(|d| panic!("{d}"));
        assert!(wf.steps.len() >= min_steps, "{file}: {} steps", wf.steps.len());
        assert_eq!(wf.target_kind.as_str(), "site");
    }
}

#[test]
fn pool_capacities_can_be_overridden_for_what_if_planning() {
    let path = format!("{}/../../workflows/restore-2.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let db = rewind_model::PoolName::new("db_restore").unwrap();
    let more = Workflow::with_capacities(&text, &[(db.clone(), 16)]).unwrap();
    let (a, b) =
        (Workflow::parse("a.toml", &text).unwrap(), Workflow::parse("b.toml", &more).unwrap());
    assert_eq!(b.pool(&db).unwrap().capacity, 16);
    assert_eq!(a.steps.len(), b.steps.len());
    for (x, y) in a.resources.iter().zip(&b.resources) {
        assert!(x.name == db || x == y, "only db_restore changes");
    }
    let nope = rewind_model::PoolName::new("gpu").unwrap();
    let e = Workflow::with_capacities(&text, &[(nope, 2)]).unwrap_err();
    assert_eq!(
        e,
        "the workflow has no resource `gpu` (it has: db_restore, platform_restore, identity_restore, media_restore, api, media)"
    );
    assert!(Workflow::with_capacities(&text, &[(db, 0)]).is_err());
}

const SLICE_HEADER: &str = r#"name = "t"
target_kind = "site"

[connections]
live = "sqlite://${SANDBOX}/stores/tracker-{{target.attr.shard}}.sqlite"
scratch = "sandbox://${SANDBOX}?scratch={{run.id}}&store=tracker-{{target.attr.shard}}"
catalog = "sqlite://catalog.db"
"#;

fn slice_step(id: &str, scope: &str, action: &str) -> String {
    format!(
        "{SLICE_HEADER}\n[[steps]]\nid = \"{id}\"\nscope = \"{scope}\"\nestimate = \"1m\"\naction = {action}\n"
    )
}

#[test]
fn a_valid_copy_compare_audit_and_multi_statement_sql() {
    let text = format!(
        "{SLICE_HEADER}
[[steps]]
id = \"tracker.copy\"
estimate = \"1m\"
action = {{ kind = \"copy\", from = \"scratch\", to = \"live\", tables = [\"projects\", \"issues\"], tenant_column = \"site_id\", tenant = \"{{{{target.id}}}}\", source_restore_point = \"SELECT value FROM rewind_meta WHERE key = 'restore_point'\" }}

[[steps]]
id = \"tracker.compare\"
needs = [\"tracker.copy\"]
estimate = \"1m\"
action = {{ kind = \"compare\", from = \"scratch\", to = \"live\", tables = [\"projects\", \"issues\"], tenant_column = \"site_id\", tenant = \"{{{{target.id}}}}\" }}

[[steps]]
id = \"audit\"
needs = [\"tracker.copy\", \"tracker.compare\"]
estimate = \"1m\"
action = {{ kind = \"audit\", require = [\"tracker.copy\"] }}

[[steps]]
id = \"count\"
scope = \"run\"
estimate = \"1m\"
action = {{ kind = \"sql\", connection = \"catalog\", statements = [{{ sql = \"UPDATE sites SET status = ? WHERE plan = ?\", params = [\"active\", \"{{{{run.id}}}}\"] }}, {{ sql = \"SELECT COUNT(*) AS n FROM sites\" }}] }}
"
    );
    let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(wf.env_vars(), ["SANDBOX"]);
    let kinds: Vec<&str> = wf.steps.iter().map(|s| s.action.kind()).collect();
    assert_eq!(kinds, ["copy", "compare", "audit", "sql"]);
    assert_eq!(wf.steps[0].action.describe(), "copy scratch -> live (2 tables)");
    // The shard the connections read is an attribute targets must carry.
    assert!(
        wf.attribute_uses()
            .iter()
            .any(|u| u.attr.as_str() == "shard" && u.step.as_str() == "tracker.copy")
    );
    let rewind_model::Action::Sql(sql) = &wf.steps[3].action else { panic!() };
    assert_eq!(sql.statements.len(), 2);
}

#[test]
fn copy_and_compare_need_every_part() {
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant_column = "site_id" }"#;
    check(
        &slice_step("c", "target", action),
        K::MissingKey,
        "action =",
        Some("c"),
        "copy action has no `tenant`",
    );
    let action = r#"{ kind = "compare", from = "scratch", tables = ["issues"], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::MissingKey,
        "action =",
        Some("c"),
        "compare action has no `to` connection",
    );
    let action = r#"{ kind = "copy", from = "live", to = "live", tables = ["issues"], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "action =",
        Some("c"),
        "`from` and `to` are both `live`",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = [], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "tables = []",
        Some("c"),
        "`tables` is empty",
    );
}

#[test]
fn a_root_alone_is_a_slice_and_exclude_needs_it() {
    let action = r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", exclude = ["audit_log"], tenant = "{{target.id}}" }"#;
    let wf = Workflow::parse("w.toml", &slice_step("c", "target", action))
        .unwrap_or_else(|d| panic!("{d}"));
    let rewind_model::Action::Copy(c) = &wf.steps[0].action else { panic!() };
    assert_eq!(c.root.as_deref(), Some("sites"));
    assert!(c.tables.is_empty() && c.tenant_column.is_none());
    assert_eq!(c.exclude, ["audit_log"]);
    assert_eq!(wf.steps[0].action.describe(), "copy scratch -> live (root sites, 1 excluded)");

    let action = r#"{ kind = "copy", from = "scratch", to = "live", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::MissingKey,
        "action =",
        Some("c"),
        "copy action has no `root` and no `tables`",
    );
    let action =
        r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::MissingKey,
        "action =",
        Some("c"),
        "copy action has no `root` and no `tenant_column`",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant_column = "site_id", exclude = ["x"], tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "exclude",
        Some("c"),
        "`exclude` needs `root`",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", exclude = ["sites"], tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "exclude",
        Some("c"),
        "`exclude` names `sites`, which is the root",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", tables = ["issues"], exclude = ["issues"], tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "exclude",
        Some("c"),
        "`exclude` names `issues`, which is also listed in `tables`",
    );
    let action =
        r#"{ kind = "copy", from = "scratch", to = "live", root = "sites; --", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidId,
        "root",
        Some("c"),
        "table name \"sites; --\" is not valid",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", exclude = [], tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "exclude",
        Some("c"),
        "`exclude` is empty",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", excludes = ["a"], tenant = "x" }"#;
    check(&slice_step("c", "target", action), K::UnknownKey, "excludes", Some("c"), "excludes");
}

#[test]
fn table_and_column_names_are_identifiers_never_sql() {
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues; DROP TABLE sites"], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidId,
        "issues; DROP",
        Some("c"),
        "table name \"issues; DROP TABLE sites\" is not valid",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues", "issues"], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidValue,
        "tables =",
        Some("c"),
        "table `issues` is listed twice",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant_column = "site-id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::InvalidId,
        "\"site-id\"",
        Some("c"),
        "column name \"site-id\" is not valid",
    );
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant_column = "site_id", tenant = "x", source_restore_point = "SELECT '{{run.id}}'" }"#;
    check(
        &slice_step("c", "target", action),
        K::TemplateInSql,
        "source_restore_point",
        Some("c"),
        "`{{run.id}}` inside SQL text",
    );
}

#[test]
fn connections_must_exist_and_resolve_for_the_step() {
    let action = r#"{ kind = "copy", from = "scrach", to = "live", tables = ["issues"], tenant_column = "site_id", tenant = "x" }"#;
    check(
        &slice_step("c", "target", action),
        K::UnknownConnection,
        "\"scrach\"",
        Some("c"),
        "unknown connection `scrach` (did you mean `scratch`?)",
    );
    // A group-scope step cannot use a connection that names one target's shard.
    let action = r#"{ kind = "copy", from = "scratch", to = "live", tables = ["issues"], tenant_column = "site_id", tenant = "{{group.value}}" }"#;
    check(
        &slice_step("c", "group:shard", action),
        K::UnresolvedTemplate,
        "\"scratch\"",
        Some("c"),
        "connection `scratch`: `{{target.attr.shard}}` cannot resolve in a group:shard step",
    );
    let bad =
        "name = \"t\"\ntarget_kind = \"site\"\n[connections]\nlive = \"sqlite://${SANDBOX/x.db\"\n";
    check(
        &format!("{bad}{}", step("a", "")),
        K::UnresolvedTemplate,
        "live =",
        None,
        "connection `live`: unclosed `${`",
    );
}

#[test]
fn sql_statements_are_one_form_or_the_other() {
    let both = r#"{ kind = "sql", connection = "catalog", sql = "SELECT 1", statements = [{ sql = "SELECT 2" }] }"#;
    check(
        &slice_step("q", "run", both),
        K::InvalidValue,
        "action =",
        Some("q"),
        "give either `sql` (with `params`) or `statements`, not both",
    );
    let spliced = r#"{ kind = "sql", connection = "catalog", statements = [{ sql = "SELECT 1" }, { sql = "DELETE FROM sites WHERE id = '{{run.id}}'" }] }"#;
    check(
        &slice_step("q", "run", spliced),
        K::TemplateInSql,
        "action =",
        Some("q"),
        "`{{run.id}}` inside SQL text",
    );
    let misplaced = r#"{ kind = "sql", connection = "catalog", statements = [{ sql = "SELECT ?" }], params = ["x"] }"#;
    check(
        &slice_step("q", "run", misplaced),
        K::InvalidValue,
        "action =",
        Some("q"),
        "`params` goes inside each of `statements`",
    );
}

#[test]
fn audits_read_only_unique_dependencies() {
    let text = format!(
        "{HEADER}\n{}{}{}",
        step("copy", ""),
        step("other", ""),
        "[[steps]]\nid = \"audit\"\nneeds = [\"copy\"]\nestimate = \"1m\"\naction = { kind = \"audit\", require = [\"copy\", \"other\"] }\n"
    );
    check(
        &text,
        K::InvalidValue,
        "require =",
        Some("audit"),
        "the audit requires `other`, which is not in this step's `needs`",
    );
    let text = format!(
        "{HEADER}\n{}{}",
        step("copy", ""),
        "[[steps]]\nid = \"audit\"\nscope = \"run\"\nneeds = [\"copy\"]\nestimate = \"1m\"\naction = { kind = \"audit\", require = [\"copy\"] }\n"
    );
    check(&text, K::InvalidValue, "require =", Some("audit"), "the audit cannot read `copy`");
}

#[test]
fn preflight_and_retention_are_checked() {
    let ok = with_header(&format!(
        "[preflight]\nstate = \"deleted\"\naction = {{ kind = \"sql\", connection = \"catalog\", sql = \"SELECT kind, state FROM t WHERE id = ?\", params = [\"{{{{target.id}}}}\"] }}\n{}",
        step("a", "")
    ));
    let wf = Workflow::parse("w.toml", &ok).unwrap();
    let pf = wf.preflight.as_ref().unwrap();
    assert_eq!((pf.state.as_deref(), pf.action.kind()), (Some("deleted"), "sql"));
    assert_eq!(wf.retention, rewind_model::DEFAULT_RETENTION);

    let text = format!("retention = \"0s\"\n{}", with_header(&step("a", "")));
    check(&text, K::InvalidValue, "retention", None, "`retention` must be longer than 0s");
    let text = format!("retention = \"a month\"\n{}", with_header(&step("a", "")));
    check(
        &text,
        K::InvalidDuration,
        "retention",
        None,
        "`retention` = \"a month\" is not a duration",
    );

    let cases = [
        (
            "action = { kind = \"command\", program = \"r\", args = [\"{{target.id}}\"] }",
            K::UnresolvedTemplate,
            "a preflight command runs once for all targets",
        ),
        (
            "action = { kind = \"sql\", connection = \"catalog\", sql = \"SELECT 1\", params = [\"{{run.id}}\"] }",
            K::UnresolvedTemplate,
            "the preflight runs before the run exists",
        ),
        (
            "action = { kind = \"sql\", connection = \"catlog\", sql = \"SELECT 1\" }",
            K::UnknownConnection,
            "unknown connection `catlog` (did you mean `catalog`?)",
        ),
        (
            "action = { kind = \"audit\", require = [] }",
            K::InvalidValue,
            "a preflight is a `sql` query or a `command`, not a `audit` action",
        ),
        ("stat = \"deleted\"", K::UnknownKey, "unknown key `stat` in [preflight]"),
        (
            "action = { kind = \"sql\", connection = \"catalog\", sql = \"UPDATE t SET state = 'x'\" }",
            K::InvalidValue,
            "a preflight query only reads: its statements must be SELECTs, not `UPDATE`",
        ),
    ];
    for (line, kind, needle) in cases {
        let text = with_header(&format!("[preflight]\n{line}\n{}", step("a", "")));
        check(&text, kind, line.split(" = ").next().unwrap(), None, needle);
    }
    let text = with_header(&format!("[preflight]\nstate = \"deleted\"\n{}", step("a", "")));
    check(&text, K::MissingKey, "[preflight]", None, "[preflight] has no `action`");
}

/// Issue 11, why 1: `SELECT …; DELETE FROM sites` passed the first-word check and deleted every
/// row under `--dry-run`. A preflight query is one statement, refused at `check` otherwise,
/// pointing at the second statement.
#[test]
fn a_preflight_query_is_one_statement() {
    let pf = |sql: &str| {
        with_header(&format!(
            "[preflight]\naction = {{ kind = \"sql\", connection = \"catalog\", sql = {sql} }}\n{}",
            step("a", "")
        ))
    };
    let text = pf(r#""SELECT 'site' AS kind, 'deleted' AS state; DELETE FROM sites""#);
    let diags = Workflow::parse("w.toml", &text).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags}");
    let d = &diags.0[0];
    assert_eq!(d.kind, K::InvalidValue);
    let line = line_of(&text, "DELETE FROM sites");
    let col = text.lines().nth(line as usize - 1).unwrap().find("DELETE").unwrap() as u32 + 1;
    assert_eq!((d.location.line, d.location.column), (line, col), "at the second statement");
    assert!(
        d.message.starts_with(
            "[preflight] query `SELECT 'site' AS kind, 'deleted' AS state; DELETE FROM sites`: \
             it holds more than one statement: `DELETE FROM sites` follows"
        ),
        "{d}"
    );
    let shown = d.to_string();
    assert!(shown.starts_with(&format!("w.toml:{line}:{col}: error[invalid-value]: ")), "{d}");

    // One trailing `;`, comments, and `;` inside literals are one statement.
    for sql in [
        r#""SELECT kind, state FROM t WHERE id = ?;""#,
        r#""SELECT kind, 'a;b' AS state FROM t WHERE id = ? -- trailing; comment""#,
        "'''\n/* tag; */ SELECT kind, \"st;ate\" AS state FROM t WHERE id = ?;\n'''",
        r#""WITH x AS (SELECT 1) SELECT kind, state FROM t""#,
    ] {
        let r = Workflow::parse("w.toml", &pf(sql));
        assert!(r.is_ok(), "{sql}: {}", r.err().map(|d| d.to_string()).unwrap_or_default());
    }
    // Each of `statements`, at its own line.
    let text = with_header(&format!(
        "[preflight]\naction = {{ kind = \"sql\", connection = \"catalog\", statements = [\n  {{ sql = \"SELECT 1\" }},\n  {{ sql = \"SELECT 2; UPDATE t SET x = 1\" }},\n] }}\n{}",
        step("a", "")
    ));
    check(&text, K::InvalidValue, "SELECT 2;", None, "`UPDATE t SET x = 1` follows the first");

    // A PostgreSQL connection reads dollar quotes; a URL that names no database: every reading.
    let with_url = |url: &str, preflight: &str| {
        format!("{}\n{preflight}{}", HEADER.replace("sqlite://catalog.db", url), step("a", ""))
    };
    let dollar = "[preflight]\naction = { kind = \"sql\", connection = \"catalog\", sql = \"SELECT $$;$$ AS kind\" }\n";
    assert!(Workflow::parse("w.toml", &with_url("postgres://h/db", dollar)).is_ok());
    let lite = with_url("sqlite://c.db", dollar);
    check(&lite, K::InvalidValue, "SELECT $$", None, "`$$ AS kind` follows");
    let unknown = with_url("${CATALOG_URL}", dollar);
    check(&unknown, K::InvalidValue, "SELECT $$", None, "read as PostgreSQL, SQLite and MySQL SQL");
    // A backslash before a quote ends a PostgreSQL string: the rest is a second statement.
    let sneaky = r#"[preflight]
action = { kind = "sql", connection = "catalog", sql = "SELECT kind FROM t WHERE x = 'a\\'; DELETE FROM t; --'" }
"#;
    let text = with_url("postgres://h/db", sneaky);
    // The TOML string holds an escape: the error points at the string.
    check(&text, K::InvalidValue, "SELECT kind", None, "`DELETE FROM t; --'` follows");
    // A comment before the query is fine; a write is not a query whatever precedes it.
    check(
        &pf(r#""/* note */ DELETE FROM t""#),
        K::InvalidValue,
        "DELETE FROM t",
        None,
        "its statements must be SELECTs, not `DELETE`",
    );
}

/// A stored run's snapshot is held to the rules of the release that accepted it: the rules
/// added since are noted, not fatal, so the run still loads; everything else still refuses it.
#[test]
fn a_snapshot_notes_the_rules_added_since_it_was_stored() {
    let text = "name = \"w\"\ntarget_kind = \"site\"\n[connections]\nc = \"postgres://u:pw@h/db\"\n\
                [[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"{{target.attr.tool}}\" }\n";
    assert!(Workflow::parse("w.toml", text).is_err());
    let (wf, relaxed) = Workflow::parse_snapshot("w.toml", text).unwrap();
    assert_eq!(relaxed.len(), 2, "{relaxed:?}");
    assert!(relaxed[0].contains("literal password"), "{relaxed:?}");
    assert!(relaxed[1].starts_with("step `a`: `program` must not be built from"), "{relaxed:?}");
    assert_eq!(wf.templated_programs().len(), 1);
    // A placeholder making the whole URL (rewind 0.1's `{{needs.pitr.url}}`) loads too, and is
    // named so the run can be refused; it never renders.
    let whole = text.replace("postgres://u:pw@h/db", "{{needs.a.url}}");
    assert!(Workflow::parse("w.toml", &whole).is_err());
    let (wf, relaxed) = Workflow::parse_snapshot("w.toml", &whole).unwrap();
    assert!(relaxed[0].contains("connection `c`"), "{relaxed:?}");
    assert_eq!(wf.templated_urls().len(), 1);
    let rendered = wf.connections[0]
        .url
        .render(|_| Ok::<_, ()>(rewind_model::Fill::Value("sqlite:///tmp/x.db".to_owned())));
    assert!(rendered.is_err(), "{rendered:?}");
    // Anything else is still an error.
    let broken = text.replace("estimate = \"1m\"", "estimate = \"soon\"");
    assert!(Workflow::parse_snapshot("w.toml", &broken).is_err());
}

/// A `pitr` step with `action`'s keys after `kind = "pitr"`.
fn pitr(keys: &str) -> String {
    with_header(&format!(
        "[[steps]]\nid = \"restore\"\nscope = \"group:shard\"\nestimate = \"1h\"\naction = {{ kind = \"pitr\", {keys} }}\n"
    ))
}

#[test]
fn pitr_actions_name_their_engine_method_and_keys() {
    let ok = pitr(
        r#"engine = "postgres", method = "archive", base_backup = "/b/{{group.value}}/base", wal_archive = "/b/{{group.value}}/wal", into = "/s/{{run.id}}/{{group.value}}""#,
    );
    let wf = Workflow::parse("w.toml", &ok).unwrap();
    assert_eq!(wf.steps[0].action.kind(), "pitr");
    assert!(wf.steps[0].action.describe().starts_with("pitr postgres archive into /s/"));
    for keys in [
        r#"engine = "postgres", method = "pgbackrest", stanza = "shard-{{group.value}}", config = "/etc/pgbackrest/pgbackrest.conf", into = "/s/x""#,
        r#"engine = "mariadb", method = "binlog", base_backup = "/b/full", binlogs = "/b/binlog", into = "/s/x", run_as = "mysql""#,
    ] {
        Workflow::parse("w.toml", &pitr(keys)).unwrap();
    }
    let cases: &[(&str, K, &str)] = &[
        (
            r#"method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s""#,
            K::MissingKey,
            "has no `engine`",
        ),
        (
            r#"engine = "postgress", method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s""#,
            K::InvalidValue,
            "did you mean `postgres`",
        ),
        (
            r#"engine = "postgres", base_backup = "/b", wal_archive = "/w", into = "/s""#,
            K::MissingKey,
            "has no `method`",
        ),
        (
            r#"engine = "postgres", method = "archiv", base_backup = "/b", wal_archive = "/w", into = "/s""#,
            K::InvalidValue,
            "did you mean `archive`",
        ),
        (
            r#"engine = "mariadb", method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s""#,
            K::InvalidValue,
            "method `archive` restores postgres, not mariadb",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", into = "/s""#,
            K::MissingKey,
            "has no `wal_archive`",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", wal_archive = "/w""#,
            K::MissingKey,
            "has no `into`",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", wal_archive = "/w", stanza = "x", into = "/s""#,
            K::InvalidValue,
            "`stanza` belongs to method `pgbackrest`",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "", wal_archive = "/w", into = "/s""#,
            K::InvalidValue,
            "`base_backup` is empty",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s", run_as = "root""#,
            K::InvalidValue,
            "refuse to run as root",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s", run_as = "Post Gres""#,
            K::InvalidValue,
            "is not a user name",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b/{{group.valeu}}", wal_archive = "/w", into = "/s""#,
            K::UnresolvedTemplate,
            "group.valeu",
        ),
        (
            r#"engine = "postgres", method = "archive", base_backup = "/b", wal_archive = "/w", into = "/s", intoo = "/t""#,
            K::UnknownKey,
            "intoo",
        ),
    ];
    for (keys, kind, needle) in cases {
        check(&pitr(keys), *kind, "action = {", Some("restore"), needle);
    }
}

#[test]
fn copy_and_compare_take_as_a_template_and_it_changes_the_fingerprint_only_when_set() {
    let wf = |extra: &str| {
        let action = format!(
            r#"{{ kind = "copy", from = "scratch", to = "live", root = "sites", tenant = "{{{{target.id}}}}"{extra} }}"#
        );
        Workflow::parse("w.toml", &slice_step("c", "target", &action))
            .unwrap_or_else(|d| panic!("{d}"))
    };
    let with = wf(r#", as = "{{target.attr.new_id}}""#);
    let rewind_model::Action::Copy(s) = &with.steps[0].action else { panic!() };
    assert_eq!(s.as_tenant.as_ref().map(|t| t.as_str()), Some("{{target.attr.new_id}}"));
    assert!(
        with.attribute_uses().iter().any(|u| u.attr.as_str() == "new_id"),
        "targets must carry the new id"
    );
    let without = wf("");
    let rewind_model::Action::Copy(s) = &without.steps[0].action else { panic!() };
    assert!(s.as_tenant.is_none());
    let fingerprint = |w: &Workflow| {
        let targets = rewind_model::TargetSet::parse(
            "t.csv",
            "id,kind,shard,new_id\n6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b,site,1,acme2\n",
            rewind_model::TargetsFormat::Csv,
        )
        .unwrap();
        rewind_model::Plan::build(w.clone(), targets, "2022-04-05T07:33:00Z".parse().unwrap())
            .unwrap()
            .fingerprint()
            .to_string()
    };
    assert_ne!(fingerprint(&with), fingerprint(&without));
}

/// A copy step whose action is a table of its own, `references` one item per line.
fn references_step(kind: &str, references: &[&str]) -> String {
    let items: String = references.iter().map(|r| format!("  {r:?},\n")).collect();
    format!(
        "{SLICE_HEADER}\n[[steps]]\nid = \"c\"\nestimate = \"1m\"\n[steps.action]\nkind = \"{kind}\"\nfrom = \"scratch\"\nto = \"live\"\nroot = \"sites\"\ntenant = \"{{{{target.id}}}}\"\nreferences = [\n{items}]\n"
    )
}

#[test]
fn references_parse_into_typed_references_whitespace_free() {
    for kind in ["copy", "compare"] {
        let text = references_step(
            kind,
            &[
                "issues(project_id) -> projects(id)",
                "memberships(group_id)->groups(id)",
                " a ( x ,y ) ->  b(p, q) ",
            ],
        );
        let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
        let (rewind_model::Action::Copy(s) | rewind_model::Action::Compare(s)) =
            &wf.steps[0].action
        else {
            panic!()
        };
        let shown: Vec<String> = s.references.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "issues(project_id) -> projects(id)",
                "memberships(group_id) -> groups(id)",
                "a(x, y) -> b(p, q)"
            ]
        );
        let r = &s.references[2];
        assert_eq!((r.child.as_str(), r.parent.as_str()), ("a", "b"));
        assert_eq!(
            (r.columns.clone(), r.parent_columns.clone()),
            (vec!["x".to_owned(), "y".to_owned()], vec!["p".to_owned(), "q".to_owned()])
        );
    }
}

#[test]
fn a_bad_reference_is_located_on_its_own_line_and_quoted() {
    let cases: &[(&str, &str)] = &[
        ("issues(project_id) projects(id)", "has no `->`"),
        ("a(x) -> b(y) -> c(z)", "more than one `->`"),
        ("issues(project_id, site_id) -> projects(id)", "2 column(s) of `issues` refer to 1"),
        ("issues -> projects(id)", "is not `table(column, …)`"),
        ("issues(project_id) -> projects()", "has an empty column name"),
        ("issues(project id) -> projects(id)", "column name \"project id\" is not valid"),
        ("issues(a, a) -> projects(id, x)", "names column `a` twice"),
        ("is-sues(a) -> projects(id)", "table name \"is-sues\" is not valid"),
        ("", "it is empty"),
        ("  ", "it is empty"),
    ];
    for (bad, needle) in cases {
        for kind in ["copy", "compare"] {
            let text =
                references_step(kind, &["comments(issue_id) -> issues(id)", bad, "x(a) -> y(b)"]);
            let marker = format!("  {bad:?},");
            check(&text, K::InvalidValue, &marker, Some("c"), needle);
            check(&text, K::InvalidValue, &marker, Some("c"), &format!("{bad:?}"));
        }
    }
    check(
        &references_step("copy", &["a(x, y) -> b(p, q)", "a(y,x) -> b(q,p)"]),
        K::InvalidValue,
        "\"a(y,x) -> b(q,p)\"",
        Some("c"),
        "lists \"a(y,x) -> b(q,p)\" twice",
    );
    check(
        &references_step("copy", &[]),
        K::InvalidValue,
        "references = [",
        Some("c"),
        "`references` is empty",
    );
    // A bad reference refuses the workflow: nothing runs on it.
    let text = references_step("copy", &["issues(project_id) -> "]);
    let diags = Workflow::parse("w.toml", &text).unwrap_err();
    assert_eq!(diags.iter().count(), 1, "{diags}");
}

#[test]
fn references_take_part_in_the_fingerprint() {
    let fingerprint = |text: &str| {
        let wf = Workflow::parse("w.toml", text).unwrap_or_else(|d| panic!("{d}"));
        let targets = rewind_model::TargetSet::parse(
            "t.csv",
            "id,kind,shard\n6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b,site,1\n",
            rewind_model::TargetsFormat::Csv,
        )
        .unwrap();
        rewind_model::Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap()
    };
    let one = fingerprint(&references_step("copy", &["issues(project_id) -> projects(id)"]));
    // Layout does not count: the same references spelled otherwise.
    let same = fingerprint(&references_step("copy", &["issues( project_id )->projects(id)"]));
    assert_eq!(one.fingerprint(), same.fingerprint());
    // A run stored with one set of references does not load with another: a changed
    // reference, one more, or none.
    let stored = one.fingerprint().to_string();
    for changed in [
        references_step("copy", &["issues(project_id) -> projects(key)"]),
        references_step(
            "copy",
            &["issues(project_id) -> projects(id)", "issues(parent_id) -> issues(id)"],
        ),
        references_step("copy", &["issues(parent_id) -> issues(id)"]),
        slice_step(
            "c",
            "target",
            r#"{ kind = "copy", from = "scratch", to = "live", root = "sites", tenant = "{{target.id}}" }"#,
        ),
    ] {
        let p = fingerprint(&changed);
        assert_ne!(p.fingerprint(), one.fingerprint(), "{changed}");
        let e = p.check_fingerprint(&stored).unwrap_err();
        assert!(e.contains("its fingerprint is now"), "{e}");
    }
}

#[test]
fn a_step_queue_is_a_template_defaulting_to_none() {
    let text = with_header(&format!(
        "{}{}",
        step("a", "queue = \"us-{{target.attr.region}}\""),
        step("b", "")
    ));
    let wf = Workflow::parse("w.toml", &text).unwrap();
    assert_eq!(wf.steps[0].queue.as_ref().map(|q| q.as_str()), Some("us-{{target.attr.region}}"));
    assert!(wf.steps[1].queue.is_none());
}

#[test]
fn bad_queues_are_refused_where_they_are() {
    let text = with_header(&step("a", "queue = \"\"  # Q"));
    check(&text, K::InvalidValue, "# Q", Some("a"), "`queue` is empty");
    let text = with_header(&step("a", "queue = \"east\\nwest\"  # Q"));
    check(&text, K::InvalidValue, "# Q", Some("a"), "newline");
    let text = with_header(&step("a", "queue = 3  # Q"));
    check(&text, K::InvalidType, "# Q", Some("a"), "`queue` must be a string");
    let text = with_header(&step("a", "queue = \"{{target.attr\"  # Q"));
    check(&text, K::UnresolvedTemplate, "# Q", Some("a"), "");
}
