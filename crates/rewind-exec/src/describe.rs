//! What an attempt would do, rendered without doing it: `rewind run --dry-run`.
//!
//! [`describe`] resolves every template of an attempt's action and lists the commands and
//! statements its executor would issue, in order, with bound parameters kept apart from the SQL
//! text (they are bound, never spliced). Nothing is connected to, started or written.
//!
//! A dry run happens before the run exists and before any dependency has produced output, so
//! templates are rendered here rather than by [`Attempt::render`]: `{{run.id}}` renders as
//! `<run id>` and `{{needs.STEP.KEY}}` as `<needs.STEP.KEY>`; every other placeholder and
//! `${VAR}` renders as in a real attempt, and one that cannot is an error naming its template.
//! Connection URLs then go through the attempt's resolvers; a resolver that refuses the URL (a
//! scratch URL holding `<run id>`, say) leaves it shown as rendered, with the reason.
//!
//! A `copy` or `compare` is planned from a catalog at run time: its calls here say what it
//! does, and the slice's plan (tables, paths, order, selectors) is shown by `rewind plan` and
//! the dry run's header from the connections they can reach ([`crate::discover`]).

use std::fmt;

use rewind_model::{
    Action, ConnectionName, Fill, Placeholder, REDACTED, Ref, SliceAction, Template, UrlTemplate,
    is_secret_name, redact_text, redact_url,
};

use crate::Attempt;
use crate::command::resolve;
use crate::connect::{Kind, kind, redact};
use crate::slice;

/// One thing an attempt would do, fully rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A program run with an argument array (no shell).
    Command {
        /// The program, resolved against the workflow's folder when it holds a `/`.
        program: String,
        /// The arguments, rendered, passwords of URLs in them redacted.
        args: Vec<String>,
        /// The action's own `env` entries, rendered (rewind's `REWIND_*` variables not listed),
        /// the values of secret-looking names (`*PASSWORD*`, `*TOKEN*`, `*SECRET*`, ...)
        /// shown as `***`.
        env: Vec<(String, String)>,
    },
    /// A statement on a connection; `params` are bound, never spliced.
    Statement {
        /// The connection's name in the workflow.
        connection: String,
        /// Its URL, rendered and resolved, password redacted.
        url: String,
        /// Why `url` could not be resolved before the run (it is then shown as rendered).
        unresolved: Option<String>,
        /// The statement text, exactly as executed.
        sql: String,
        /// The bound parameters, in order.
        params: Vec<String>,
    },
    /// Something that is not a statement or a command (an audit's check, a condition), in words.
    Note(String),
}

/// What `a` would do, in order. Fails when a template cannot render (an unset `${VAR}`, a
/// missing target attribute), naming the template, or when the action cannot run at all (two
/// kinds of database in a `copy`).
pub fn describe(a: &Attempt) -> Result<Vec<Call>, String> {
    match &*a.action {
        Action::Command(c) => {
            let program = render(a, &c.program)?;
            let args = c.args.iter().map(|t| render(a, t)).collect::<Result<Vec<_>, _>>()?;
            // A dry run is printed and pasted around: secrets are not shown.
            let args = args.iter().map(|s| redact_text(s)).collect();
            let env = c
                .env
                .iter()
                .map(|(k, t)| {
                    let v = render(a, t)?;
                    Ok((
                        k.clone(),
                        if is_secret_name(k) { REDACTED.to_owned() } else { redact_text(&v) },
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let program = resolve(&a.workdir, &program).display().to_string();
            Ok(vec![Call::Command { program, args, env }])
        }
        Action::Sql(s) => {
            let conn = Conn::new(a, &s.connection)?;
            s.statements
                .iter()
                .map(|st| {
                    let params =
                        st.params.iter().map(|p| render(a, p)).collect::<Result<Vec<_>, _>>()?;
                    Ok(conn.statement(st.sql.clone(), params))
                })
                .collect()
        }
        Action::Copy(s) => slice_calls(a, s, true),
        Action::Compare(s) => slice_calls(a, s, false),
        Action::Audit(au) => {
            let mut text = format!(
                "check that every dependency that reports a `restore_point` reports {}",
                a.restore_point
            );
            if !au.require.is_empty() {
                let names: Vec<String> = au.require.iter().map(|r| format!("`{r}`")).collect();
                text.push_str(&format!(
                    ", and that {} reported one (unless skipped by `when`)",
                    names.join(", ")
                ));
            }
            text.push_str("; nothing is read or written");
            Ok(vec![Call::Note(text)])
        }
        Action::Pitr(p) => {
            // The run id is not known yet; the rest renders as the run will.
            let req = crate::pitr::request(a);
            let what = match &req {
                Ok(r) => {
                    let source = match &r.source {
                        rewind_pitr::Source::Archive { base_backup, wal_archive } => format!(
                            "base backup {} and WAL archive {}",
                            base_backup.display(),
                            wal_archive.display()
                        ),
                        rewind_pitr::Source::Pgbackrest { stanza, config } => format!(
                            "pgBackRest stanza `{stanza}` ({}), the newest backup ending before it",
                            config.display()
                        ),
                        rewind_pitr::Source::Binlog { base_backup, binlogs } => format!(
                            "mariadb-backup {} and binlogs {}",
                            base_backup.display(),
                            binlogs.display()
                        ),
                    };
                    format!(
                        "recover a scratch {} instance into {} from {source} to exactly {} (refused if the backups do not cover it; the instance runs as {} on a free 127.0.0.1 port, archiving off, listed by `rewind scratch list`)",
                        p.engine(),
                        r.into.display(),
                        a.restore_point,
                        r.run_as.as_deref().unwrap_or("the engine's user")
                    )
                }
                Err(e) => return Err(e.clone()),
            };
            Ok(vec![Call::Note(what)])
        }
    }
}

/// Renders `t` for a dry run (see the module documentation); an error names the template. A
/// `${VAR}` named like a secret ([`is_secret_name`]) is shown as `***`.
pub fn render(a: &Attempt, t: &Template) -> Result<String, String> {
    t.render(|r| match r {
        Ref::Placeholder(Placeholder::RunId) => Ok("<run id>".to_owned()),
        Ref::Placeholder(p @ Placeholder::Needs { .. }) => Ok(format!("<{p}>")),
        Ref::Placeholder(p) => a.value(p),
        Ref::Env(name) => {
            a.vars.get(name).map(|v| if is_secret_name(name) { REDACTED.to_owned() } else { v })
        }
    })
    .map_err(|e| redact_text(&format!("`{}`: {e}", t.as_str())))
}

/// Renders a connection URL for a dry run as [`Attempt::render_url`] does (values encoded for
/// their component, or refused), with `<run id>` and `<needs.STEP.KEY>` shown as they are.
fn render_url(a: &Attempt, t: &UrlTemplate) -> Result<String, String> {
    t.render(|r| match r {
        Ref::Placeholder(Placeholder::RunId) => Ok(Fill::Shown("<run id>".to_owned())),
        Ref::Placeholder(p @ Placeholder::Needs { .. }) => Ok(Fill::Shown(format!("<{p}>"))),
        Ref::Placeholder(p) => a.value(p).map(Fill::Value),
        Ref::Env(name) => a.vars.get(name).map(Fill::Value),
    })
    .map_err(|e| format!("`{}`: {e}", redact_url(t.as_str())))
}

/// One end of a slice action as a dry run resolves it (see [`crate::discover`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SliceEnd {
    pub(crate) name: String,
    url: String,
    resolved: bool,
}

impl SliceEnd {
    /// The URL, when it is known before the run.
    pub(crate) fn url(&self) -> Option<&str> {
        (self.resolved && !self.url.contains("<run id>") && !self.url.contains("<needs."))
            .then_some(self.url.as_str())
    }
}

/// The connection `name` of `a`, rendered and resolved.
pub(crate) fn slice_end(a: &Attempt, name: &ConnectionName) -> Result<SliceEnd, String> {
    let c = Conn::new(a, name)?;
    Ok(SliceEnd { name: c.name, resolved: c.unresolved.is_none(), url: c.url })
}

/// A connection as a dry run sees it.
struct Conn {
    name: String,
    /// Rendered, and resolved when a resolver could.
    url: String,
    unresolved: Option<String>,
}

impl Conn {
    fn new(a: &Attempt, name: &ConnectionName) -> Result<Self, String> {
        let conn = a
            .connections
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| format!("the workflow declares no connection `{name}`"))?;
        let url = render_url(a, &conn.url).map_err(|e| format!("connection `{name}`: {e}"))?;
        for resolve in &a.resolvers.0 {
            match resolve(&url) {
                Some(Ok(u)) => {
                    return Ok(Self { name: name.to_string(), url: u, unresolved: None });
                }
                Some(Err(e)) => {
                    let e = redact_text(&e);
                    return Ok(Self { name: name.to_string(), url, unresolved: Some(e) });
                }
                None => {}
            }
        }
        Ok(Self { name: name.to_string(), url, unresolved: None })
    }

    /// The database kind, when the URL is resolved (`None`: not known before the run).
    fn kind(&self) -> Option<Result<Kind, String>> {
        self.unresolved.is_none().then(|| kind(&self.url))
    }

    fn statement(&self, sql: impl Into<String>, params: Vec<String>) -> Call {
        Call::Statement {
            connection: self.name.clone(),
            url: redact(&self.url),
            unresolved: self.unresolved.clone(),
            sql: sql.into(),
            params,
        }
    }
}

/// What a `copy` (`copy: true`) or `compare` does, in the executor's order. The statements of
/// the slice itself depend on the catalog, read at run time: `rewind plan` and the dry run's
/// header show the plan and the selectors, read from the connections they can reach
/// ([`crate::discover`]).
fn slice_calls(a: &Attempt, s: &SliceAction, copy: bool) -> Result<Vec<Call>, String> {
    let what = if copy { "copy" } else { "compare" };
    let from = Conn::new(a, &s.from)?;
    let to = Conn::new(a, &s.to)?;
    let tenant = render(a, &s.tenant)?;
    // The executor needs both ends of one kind; a dry run knows the kind of the ends it could
    // resolve.
    let kinds = match (from.kind(), to.kind()) {
        (Some(f), Some(t)) => Some(slice::slice_kind(s, what, f, t)?),
        (Some(k), None) | (None, Some(k)) => Some(k?),
        (None, None) => None,
    };
    let mut calls = Vec::new();
    if let Some(q) = &s.source_restore_point {
        calls.push(from.statement(q.clone(), Vec::new()));
        calls.push(Call::Note(format!(
            "stop (nothing {}) unless that returns the run's restore point, {}",
            if copy { "copied" } else { "compared" },
            a.restore_point
        )));
    }
    calls.push(Call::Note(format!(
        "plan the slice ({}) of tenant {} from `{}`'s catalog: its tables, how each reaches the tenant, their order",
        s.extent(),
        sql_quote(&tenant),
        s.from
    )));
    if let Some(new) = &s.as_tenant {
        let new = render(a, new)?;
        calls.push(Call::Note(format!(
            "as the new tenant {}: the root key becomes it, uuid keys are derived from it, integer keys drawn from `{}`'s sequences (the map kept in its rewind_key_map), every foreign key follows its parent; the tenant {} is only read",
            sql_quote(&new),
            s.to,
            sql_quote(&tenant)
        )));
    }
    if !copy {
        calls.push(Call::Note(format!(
            "read the slice in `{}`, then in `{}`: per table, the row count and an order-independent digest of the rows; fail unless every table matches",
            s.from, s.to
        )));
        return Ok(calls);
    }
    let how = match kinds {
        Some(Kind::Postgres) => format!(
            "SET LOCAL session_replication_role = replica (user triggers do not fire); delete the tenant's rows, children first; stream each table's rows, parents first, from `{}` (COPY (SELECT …) TO STDOUT (FORMAT binary)) into COPY … FROM STDIN (FORMAT binary); check every foreign key of the restored rows; advance sequences past the restored keys; COMMIT",
            s.from
        ),
        Some(Kind::Mysql) => format!(
            "SET foreign_key_checks = 0, @rewind_restore = 1 (triggers that test it skip the restore); delete the tenant's rows, children first, by primary key; insert `{}`'s rows, parents first, in batched multi-row INSERTs; check every foreign key of the restored rows; COMMIT; restore the session",
            s.from
        ),
        Some(Kind::Sqlite) => {
            let file = match from.unresolved {
                None => slice::sqlite_file(&from.url)?.display().to_string(),
                Some(_) => format!("<file of `{}`>", s.from),
            };
            format!(
                "ATTACH {file} read-only; BEGIN IMMEDIATE; defer foreign keys; drop the tables' user triggers (recreated before COMMIT); delete the tenant's rows, children first; INSERT … SELECT the source's rows, parents first; COMMIT; DETACH"
            )
        }
        None => "the statements depend on the kind of database, known once the connections resolve"
            .to_owned(),
    };
    calls.push(Call::Note(format!("in one transaction on `{}`: {how}", s.to)));
    Ok(calls)
}

/// Margin of the lines under a call's first line.
const INDENT: &str = "         ";

/// `arg` as a POSIX shell word: as is when that is unambiguous, else single-quoted.
pub fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `'text'` as an SQL string literal, for showing a bound value (it is bound, not spliced).
fn sql_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// How the `i`th (from 1) parameter of `sql` is written in it: `?N` when the statement uses
/// `?`-style parameters, else `$N`.
fn param_label(sql: &str, i: usize) -> String {
    if sql.contains('?') && !sql.contains("$1") { format!("?{i}") } else { format!("${i}") }
}

impl Call {
    /// Writes the call; a statement on the connection (and URL) of `prev` omits its header.
    fn write(&self, prev: Option<&Call>, f: &mut dyn fmt::Write) -> fmt::Result {
        match self {
            Self::Command { program, args, env } => {
                write!(f, "command  {}", shell_quote(program))?;
                for a in args {
                    write!(f, " {}", shell_quote(a))?;
                }
                writeln!(f)?;
                for (k, v) in env {
                    let v = if v == REDACTED { v.clone() } else { shell_quote(v) };
                    writeln!(f, "{INDENT}env {k}={v}")?;
                }
            }
            Self::Statement { connection, url, unresolved, sql, params } => {
                let same = matches!(prev, Some(Self::Statement { connection: c, url: u, .. })
                    if c == connection && u == url);
                if !same {
                    writeln!(f, "sql      {connection}  {url}")?;
                    if let Some(why) = unresolved {
                        writeln!(f, "{INDENT}(not resolved before the run: {why})")?;
                    }
                }
                for line in sql.lines() {
                    writeln!(f, "{INDENT}{line}")?;
                }
                for (i, p) in params.iter().enumerate() {
                    writeln!(f, "{INDENT}  {} = {}", param_label(sql, i + 1), sql_quote(p))?;
                }
            }
            Self::Note(text) => writeln!(f, "note     {text}")?,
        }
        Ok(())
    }
}

impl fmt::Display for Call {
    /// The call in lines: `command  PROG ARGS` (shell-quoted) and `env` lines; `sql  CONNECTION
    /// URL`, the statement, then each bound parameter (`$1 = 'value'`); `note  TEXT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(None, f)
    }
}

/// Writes `calls` in order, as [`Call`]'s `Display` does, but with consecutive statements on one
/// connection under a single header.
pub fn write(calls: &[Call], out: &mut dyn fmt::Write) -> fmt::Result {
    let mut prev = None;
    for c in calls {
        c.write(prev, out)?;
        prev = Some(c);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic in a test is a failed test
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use rewind_model::{AttrValue, InstanceKey, RunId, SubjectKey, Target, Workflow};

    use super::*;
    use crate::{Resolvers, Vars};

    const SITE: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";

    /// An attempt of the first step of a workflow with `connections` and that step's `action`,
    /// as a dry run builds it: no outputs of dependencies, a placeholder run id.
    fn attempt(connections: &str, needs: &str, action: &str, vars: Vars) -> Attempt {
        let text = format!(
            "name = \"w\"\ntarget_kind = \"site\"\n[connections]\n{connections}\n\
             [[steps]]\nid = \"x\"\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"true\" }}\n\
             [[steps]]\nid = \"s\"\nneeds = [{needs}]\nestimate = \"1m\"\naction = {action}\n"
        );
        let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
        let mut attrs = BTreeMap::new();
        attrs.insert("shard".parse().unwrap(), AttrValue::One("s01; it's".into()));
        Attempt {
            run_id: RunId::from_uuid(uuid::Uuid::nil()),
            restore_point: "2022-04-05T07:33:00Z".parse().unwrap(),
            key: InstanceKey {
                step: wf.steps[1].id.clone(),
                subject: SubjectKey::Target(SITE.parse().unwrap()),
            },
            attempt: 1,
            idempotency_key: "k".into(),
            target: Some(Target { id: SITE.parse().unwrap(), kind: "site".into(), attrs, line: 2 }),
            group_value: None,
            needs: BTreeMap::new(),
            workdir: Path::new("/wf").to_path_buf(),
            cwd: Path::new("/wf").to_path_buf(),
            timeout: Duration::from_secs(30),
            action: Arc::new(wf.steps[1].action.clone()),
            connections: Arc::new(wf.connections.clone()),
            vars: Arc::new(vars),
            resolvers: Resolvers::default(),
        }
    }

    fn text(calls: &[Call]) -> String {
        let mut s = String::new();
        write(calls, &mut s).unwrap();
        s
    }

    #[test]
    fn a_command_renders_its_program_args_and_env() {
        let a = attempt(
            "",
            "",
            r#"{ kind = "command", program = "bin/restore", args = ["--site", "{{target.id}}", "--shard", "{{target.attr.shard}}", "--at", "{{run.restore_point}}", "--try", "{{attempt}}", "${HOME_DIR}/x"], env = { TOKEN = "a b", STEP = "{{step.id}}" } }"#,
            Vars::default().with("HOME_DIR", "/home/op"),
        );
        let calls = describe(&a).unwrap();
        assert_eq!(
            calls,
            vec![Call::Command {
                program: "/wf/bin/restore".into(),
                args: vec![
                    "--site".into(),
                    SITE.into(),
                    "--shard".into(),
                    "s01; it's".into(),
                    "--at".into(),
                    "2022-04-05T07:33:00Z".into(),
                    "--try".into(),
                    "1".into(),
                    "/home/op/x".into(),
                ],
                env: vec![("STEP".into(), "s".into()), ("TOKEN".into(), "***".into())],
            }]
        );
        assert_eq!(
            text(&calls),
            format!(
                "command  /wf/bin/restore --site {SITE} --shard 's01; it'\\''s' --at 2022-04-05T07:33:00Z --try 1 /home/op/x\n\
                 {INDENT}env STEP=s\n{INDENT}env TOKEN=***\n"
            )
        );
        let bare = attempt("", "", r#"{ kind = "command", program = "psql" }"#, Vars::default());
        assert_eq!(
            calls_program(&describe(&bare).unwrap()),
            "psql",
            "a bare name is looked up in PATH"
        );
    }

    fn calls_program(calls: &[Call]) -> String {
        match &calls[0] {
            Call::Command { program, .. } => program.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sql_keeps_its_text_and_lists_its_params() {
        let a = attempt(
            r#"live = "sqlite://${DIR}/live.sqlite""#,
            "",
            r#"{ kind = "sql", connection = "live", statements = [ { sql = "UPDATE sites SET state = 'active' WHERE site_id = $1 AND shard = $2", params = ["{{target.id}}", "{{target.attr.shard}}"] }, { sql = "SELECT 1" } ] }"#,
            Vars::default().with("DIR", "/srv/db"),
        );
        let calls = describe(&a).unwrap();
        assert_eq!(
            calls[0],
            Call::Statement {
                connection: "live".into(),
                url: "sqlite:///srv/db/live.sqlite".into(),
                unresolved: None,
                sql: "UPDATE sites SET state = 'active' WHERE site_id = $1 AND shard = $2".into(),
                params: vec![SITE.into(), "s01; it's".into()],
            }
        );
        assert_eq!(
            text(&calls),
            format!(
                "sql      live  sqlite:///srv/db/live.sqlite\n\
                 {INDENT}UPDATE sites SET state = 'active' WHERE site_id = $1 AND shard = $2\n\
                 {INDENT}  $1 = '{SITE}'\n\
                 {INDENT}  $2 = 's01; it''s'\n\
                 {INDENT}SELECT 1\n"
            )
        );
    }

    #[test]
    fn run_id_and_needs_render_as_markers_and_passwords_are_redacted() {
        let mut a = attempt(
            r#"scratch = "sandbox://demo?scratch={{run.id}}&store=catalog"
pg = "postgres://rewind:${PG_PW}@db/{{run.id}}""#,
            r#""x""#,
            r#"{ kind = "sql", connection = "scratch", sql = "SELECT $1, $2", params = ["{{needs.x.rows}}", "{{run.id}}"] }"#,
            Vars::default().with("PG_PW", "s3cr@tPW"),
        );
        a.resolvers.0.push(Arc::new(|url: &str| {
            url.starts_with("sandbox:").then(|| Err("`<run id>` is not a scratch tag".to_owned()))
        }));
        let calls = describe(&a).unwrap();
        assert_eq!(
            calls,
            vec![Call::Statement {
                connection: "scratch".into(),
                url: "sandbox://demo?scratch=<run id>&store=catalog".into(),
                unresolved: Some("`<run id>` is not a scratch tag".into()),
                sql: "SELECT $1, $2".into(),
                params: vec!["<needs.x.rows>".into(), "<run id>".into()],
            }]
        );
        assert!(
            text(&calls).contains("(not resolved before the run: `<run id>` is not a scratch tag)")
        );
        let pg = Conn::new(&a, &"pg".parse().unwrap()).unwrap();
        let Call::Statement { url, .. } = pg.statement("SELECT 1", Vec::new()) else { panic!() };
        assert_eq!(url, "postgres://rewind:***@db/<run id>");
    }

    #[test]
    fn dry_run_urls_are_encoded_like_real_ones_and_secrets_are_hidden() {
        let a = attempt(
            r#"live = "postgres://u:${PW}@h/{{target.attr.shard}}?application_name={{target.attr.shard}}"
bad = "postgres://u@{{target.attr.shard}}/db""#,
            "",
            r#"{ kind = "sql", connection = "live", sql = "SELECT 1" }"#,
            Vars::default().with("PW", "s3cr@tPW"),
        );
        let calls = describe(&a).unwrap();
        let Call::Statement { url, .. } = &calls[0] else { panic!("{calls:?}") };
        assert_eq!(url, "postgres://u:***@h/s01%3B%20it%27s?application_name=s01%3B%20it%27s");
        let bad = Conn::new(&a, &"bad".parse().unwrap()).map(|_| ()).unwrap_err();
        assert!(
            bad.starts_with("connection `bad`: `postgres://u@{{target.attr.shard}}/db`: `{{target.attr.shard}}` = \"s01; it's\" cannot be the host of this URL"),
            "{bad}"
        );
        let cmd = attempt(
            "",
            "",
            r#"{ kind = "command", program = "psql", args = ["postgres://u:${PW}@h/db"], env = { PGPASSWORD = "${PW}", DB_URL = "postgres://u:${PW}@h/db" } }"#,
            Vars::default().with("PW", "s3cr@tPW"),
        );
        let shown = text(&describe(&cmd).unwrap());
        assert!(!shown.contains("s3cr") && !shown.contains("tPW"), "{shown}");
        assert!(shown.contains("env PGPASSWORD=***\n"), "{shown}");
        assert!(shown.contains("command  psql 'postgres://u:***@h/db'"), "{shown}");
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it() {
        let a = attempt(
            "",
            "",
            r#"{ kind = "command", program = "restore", args = ["--dir", "${REWIND_TEST_SURELY_UNSET_VAR}/x"] }"#,
            Vars::default(),
        );
        let e = describe(&a).unwrap_err();
        assert!(e.contains("REWIND_TEST_SURELY_UNSET_VAR"), "{e}");
        assert!(e.contains("`${REWIND_TEST_SURELY_UNSET_VAR}/x`"), "{e}");
        let conn = attempt(
            r#"live = "sqlite://${REWIND_TEST_SURELY_UNSET_DIR}/live.sqlite""#,
            "",
            r#"{ kind = "sql", connection = "live", sql = "SELECT 1" }"#,
            Vars::default(),
        );
        let e = describe(&conn).unwrap_err();
        assert!(e.starts_with("connection `live`: "), "{e}");
        assert!(e.contains("REWIND_TEST_SURELY_UNSET_DIR"), "{e}");
    }

    const SLICE: &str =
        r#"from = "scratch", to = "live", root = "sites", tenant = "{{target.id}}""#;

    #[test]
    fn a_copy_checks_the_restore_point_then_says_what_it_does() {
        let a = attempt(
            "live = \"sqlite:///srv/live.sqlite\"\nscratch = \"sqlite:///srv/scratch/{{run.id}}.sqlite\"",
            "",
            &format!(
                "{{ kind = \"copy\", {SLICE}, source_restore_point = \"SELECT value FROM rewind_meta WHERE key = 'restore_point'\" }}"
            ),
            Vars::default(),
        );
        let calls = describe(&a).unwrap();
        let Call::Statement { connection, sql, .. } = &calls[0] else { panic!("{calls:?}") };
        assert_eq!(
            (connection.as_str(), sql.as_str()),
            ("scratch", "SELECT value FROM rewind_meta WHERE key = 'restore_point'")
        );
        let out = text(&calls);
        assert!(
            out.contains("2022-04-05T07:33:00Z"),
            "the source's restore point is checked: {out}"
        );
        assert!(out.contains(&format!("plan the slice (root sites) of tenant '{SITE}'")), "{out}");
        assert!(out.contains("ATTACH /srv/scratch/<run id>.sqlite read-only"), "{out}");
        assert!(out.contains("drop the tables' user triggers"), "{out}");
    }

    #[test]
    fn each_engine_says_how_it_keeps_triggers_quiet_and_kinds_must_match() {
        let conns = "live = \"postgres://u:${PW}@h/db?options[search_path]=live\"\nscratch = \"postgres://u:${PW}@h/db?options[search_path]=scratch\"";
        let pw = || Vars::default().with("PW", "p@ss");
        let a = attempt(conns, "", &format!("{{ kind = \"copy\", {SLICE} }}"), pw());
        let out = text(&describe(&a).unwrap());
        assert!(out.contains("session_replication_role = replica"), "{out}");
        assert!(!out.contains("p@ss"), "{out}");
        let my = "live = \"mysql://root@h/live\"\nscratch = \"mysql://root@h/backup\"";
        let a = attempt(my, "", &format!("{{ kind = \"copy\", {SLICE} }}"), Vars::default());
        assert!(text(&describe(&a).unwrap()).contains("@rewind_restore = 1"));
        let c = attempt(conns, "", &format!("{{ kind = \"compare\", {SLICE} }}"), pw());
        let out = text(&describe(&c).unwrap());
        assert!(out.contains("fail unless every table matches"), "{out}");

        let mixed = attempt(
            "live = \"sqlite:///srv/live.sqlite\"\nscratch = \"postgres://h/db\"",
            "",
            &format!("{{ kind = \"copy\", {SLICE} }}"),
            Vars::default(),
        );
        assert!(describe(&mixed).unwrap_err().contains("different kinds of database"));
    }

    #[test]
    fn an_audit_is_a_note() {
        let a = attempt("", r#""x""#, r#"{ kind = "audit", require = ["x"] }"#, Vars::default());
        let out = text(&describe(&a).unwrap());
        assert!(out.starts_with("note     check that every dependency"), "{out}");
        assert!(out.contains("2022-04-05T07:33:00Z") && out.contains("`x`"), "{out}");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_quote("--at=2022-04-05T07:33:00Z"), "--at=2022-04-05T07:33:00Z");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn a_pitr_renders_its_paths_and_refuses_a_value_that_is_not_one_component() {
        let action = r#"{ kind = "pitr", engine = "postgres", method = "archive", base_backup = "${BACKUPS}/{{target.attr.shard}}/base", wal_archive = "wal/{{target.attr.shard}}", into = "/scratch/{{target.attr.shard}}" }"#;
        let a = attempt("", "", action, Vars::default().with("BACKUPS", "/srv/backups"));
        let out = text(&describe(&a).unwrap());
        assert!(out.contains("into /scratch/s01; it's from base backup /srv/backups/s01; it's/base and WAL archive /wf/wal/s01; it's"), "{out}");
        assert!(out.contains("to exactly 2022-04-05T07:33:00Z"), "{out}");
        for bad in ["../../etc", "..", "", "a/b"] {
            let mut a = attempt("", "", action, Vars::default().with("BACKUPS", "/srv/backups"));
            let mut t = a.target.clone().unwrap();
            t.attrs.insert("shard".parse().unwrap(), AttrValue::One(bad.into()));
            a.target = Some(t);
            let e = describe(&a).unwrap_err();
            assert!(e.contains("not one path component"), "{bad:?}: {e}");
        }
    }
}
