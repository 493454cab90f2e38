//! A drill file (DESIGN.md "Drills", files in `drills/`): which workflow rehearses a restore,
//! which live tenants it samples, to what restore point, in which mode, against which RTO and
//! RPO objectives, how it cleans up, and when it is scheduled.
//!
//! `Drill::parse` reads it like `Workflow::parse`: a walk over the spanned TOML document that
//! collects every mistake with its file, line and column, unknown keys with a suggestion. It does
//! no I/O: the workflow path is kept as written, relative to the drill file, for the caller.

use std::ops::Range;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostics, ErrorKind as K, Sink, suggestion};
use crate::workflow::parse::type_name;

type Val<'i> = Spanned<DeValue<'i>>;
type Span = Range<usize>;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "workflow",
    "select",
    "restore_point",
    "mode",
    "rpo",
    "objectives",
    "cleanup",
    "schedule",
    "timezone",
];
const SELECT_KEYS: &[&str] = &[
    "kind",
    "program",
    "args",
    "connection",
    "sql",
    "sample",
    "strategy",
    "seed",
    "within",
    "ids",
];
const STRATEGIES: &[&str] = &["random", "least-recently-drilled", "list"];
const MODES: &[&str] = &["isolated", "as-new"];
const COMMAND_KEYS: &[&str] = &["program", "args"];
const OBJECTIVE_KEYS: &[&str] = &["rto", "rpo"];
const CLEANUP_KEYS: &[&str] = &["keep", "commands", "remaining"];

/// A valid drill file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drill {
    /// The drill's name (`[a-z0-9][a-z0-9-]*`): its history is kept under it.
    pub name: String,
    /// What it rehearses, for people.
    pub description: Option<String>,
    /// The workflow to run, as written: relative to the drill file's folder.
    pub workflow: String,
    /// Which tenants it restores.
    pub select: Selection,
    /// The instant restored to.
    pub restore_point: DrillPoint,
    /// Where the restore goes.
    pub mode: DrillMode,
    /// The command that reports the source's newest recoverable instant (and its clock).
    pub rpo_probe: Option<CommandSpec>,
    /// What the drill is scored against.
    pub objectives: Objectives,
    /// What happens after the drill, whatever its outcome.
    pub cleanup: Cleanup,
    /// When a scheduler runs it.
    pub schedule: Option<Schedule>,
}

/// A program and its arguments (`${VAR}` and `{{run.id}}` are filled by the runner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    /// The program: a name on `PATH`, a path relative to the drill file, or `${REWIND_EXE}`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Where the live tenants come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Selector {
    /// A command printing the targets as CSV (`id,kind,...`) or JSON Lines.
    Command(CommandSpec),
    /// One read-only query whose rows are the targets: columns `id`, `kind`, the rest attributes.
    Sql {
        /// The connection URL (`${VAR}` allowed).
        connection: String,
        /// The query.
        sql: String,
    },
}

/// How the sample is drawn from the selected tenants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum Strategy {
    /// Uniformly at random; with a seed, the same tenants for the same candidates.
    Random {
        /// The seed (none: the runner picks one and records it).
        seed: Option<u64>,
    },
    /// The tenants drilled longest ago (never drilled first), so every tenant is drilled within
    /// `within`.
    LeastRecentlyDrilled {
        /// The period every tenant should be drilled in.
        #[serde(with = "crate::duration_serde")]
        within: Duration,
    },
    /// These tenants, in this order.
    List {
        /// Their ids.
        ids: Vec<String>,
    },
}

/// `[select]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Where the candidates come from.
    pub selector: Selector,
    /// How many are drilled.
    pub sample: u32,
    /// How they are chosen.
    pub strategy: Strategy,
}

/// The restore point of a drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillPoint {
    /// The newest recoverable instant (asked of the `[rpo]` probe).
    Latest,
    /// This long before the source's clock.
    Age(#[serde(with = "crate::duration_serde")] Duration),
}

/// Where a drill restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillMode {
    /// Into scratch copies only; no live store is written.
    Isolated,
    /// As new tenants beside the live ones (new ids; the live tenant is never written).
    AsNew,
}

impl DrillMode {
    /// The name in a drill file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Isolated => "isolated",
            Self::AsNew => "as-new",
        }
    }
}

/// `[objectives]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Objectives {
    /// Recovery time objective: from the drill's start to every sampled tenant restored and
    /// validated.
    #[serde(with = "crate::duration_serde")]
    pub rto: Duration,
    /// Recovery point objective: the newest recoverable instant's age at the start.
    pub rpo: Option<Duration>,
}

/// `[cleanup]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    /// How long the restored copies are kept for inspection before the commands run.
    #[serde(with = "crate::duration_serde")]
    pub keep: Duration,
    /// What removes them, in order; run also when the drill failed.
    pub commands: Vec<CommandSpec>,
    /// `as-new`: a command printing the tenants that exist after the cleanup (a targets file,
    /// like a selector's); a drill tenant among them fails the drill. Without it the selector
    /// is asked again.
    pub remaining: Option<CommandSpec>,
}

/// `schedule` and `timezone`: validated, kept for a scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// The cron expression, as written (croner syntax).
    pub cron: String,
    /// `UTC` or a fixed offset `+HH:MM` / `-HH:MM`.
    pub timezone: String,
}

impl Drill {
    /// Reads a drill file. `file` is used in messages only.
    pub fn parse(file: &str, text: &str) -> Result<Self, Diagnostics> {
        let mut p = P { sink: Sink::new(file, text) };
        let (doc, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            for e in errors {
                p.sink.at(
                    &e.span().unwrap_or(0..0),
                    K::Syntax,
                    None,
                    e.message().trim().to_owned(),
                );
            }
            return Err(p.sink.finish().err().unwrap_or(Diagnostics(Vec::new())));
        }
        let span = doc.span();
        let doc = doc.into_inner();
        let drill = p.drill(&doc, &span);
        p.sink.finish()?;
        drill.ok_or_else(|| Diagnostics(Vec::new()))
    }
}

struct P<'a> {
    sink: Sink<'a>,
}

impl P<'_> {
    fn err(&mut self, span: &Span, kind: K, msg: impl Into<String>) {
        self.sink.at(span, kind, None, msg);
    }

    fn known_keys(&mut self, t: &DeTable<'_>, allowed: &[&str], what: &str) {
        for (key, _) in t.iter() {
            let k: &str = key.get_ref();
            if !allowed.contains(&k) {
                let hint = suggestion(k, allowed.iter().copied());
                let list = allowed.join(", ");
                self.err(
                    &key.span(),
                    K::UnknownKey,
                    format!("unknown key `{k}` in {what}{hint}; expected one of: {list}"),
                );
            }
        }
    }

    fn wrong(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        let got = type_name(v.get_ref());
        self.err(&v.span(), K::InvalidType, format!("`{key}` must be {expected}, not {got}"));
    }

    fn string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        if let DeValue::String(s) = v.get_ref() {
            Some(s.to_string())
        } else {
            self.wrong(v, key, "a string");
            None
        }
    }

    fn required<'t, 'i>(
        &mut self,
        t: &'t DeTable<'i>,
        key: &str,
        span: &Span,
        what: &str,
    ) -> Option<&'t Val<'i>> {
        let v = t.get(key);
        if v.is_none() {
            self.err(span, K::MissingKey, format!("{what} needs `{key}`"));
        }
        v
    }

    fn strings(&mut self, v: &Val<'_>, key: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(v, key, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                _ => {
                    self.wrong(item, &format!("{key}[]"), "a string");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn table<'t, 'i>(&mut self, v: &'t Val<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        if let DeValue::Table(t) = v.get_ref() {
            Some(t)
        } else {
            self.wrong(v, key, "a table");
            None
        }
    }

    fn duration(&mut self, v: &Val<'_>, key: &str) -> Option<Duration> {
        let s = self.string(v, key)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    &v.span(),
                    K::InvalidDuration,
                    format!("`{key}` = {s:?} is not a duration such as 15m, 2h or 7d ({e})"),
                );
                None
            }
        }
    }

    fn integer(&mut self, v: &Val<'_>, key: &str) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => {
                let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
                if n.is_none() {
                    self.err(&v.span(), K::InvalidValue, format!("`{key}` = {i} is out of range"));
                }
                n
            }
            _ => {
                self.wrong(v, key, "an integer");
                None
            }
        }
    }

    fn one_of(&mut self, v: &Val<'_>, key: &str, names: &[&str]) -> Option<String> {
        let s = self.string(v, key)?;
        if names.contains(&s.as_str()) {
            return Some(s);
        }
        let hint = suggestion(&s, names.iter().copied());
        self.err(
            &v.span(),
            K::InvalidValue,
            format!("`{key}` = {s:?} is not one of {}{hint}", names.join(", ")),
        );
        None
    }

    fn command(&mut self, t: &DeTable<'_>, span: &Span, what: &str) -> Option<CommandSpec> {
        let program = self.required(t, "program", span, what).and_then(|v| {
            let s = self.string(v, "program")?;
            if s.trim().is_empty() {
                self.err(&v.span(), K::InvalidValue, "`program` is empty");
                return None;
            }
            Some(s)
        });
        let args = match t.get("args") {
            Some(v) => self.strings(v, "args"),
            None => Some(Vec::new()),
        };
        Some(CommandSpec { program: program?, args: args? })
    }

    fn drill(&mut self, doc: &DeTable<'_>, span: &Span) -> Option<Drill> {
        self.known_keys(doc, TOP_KEYS, "a drill file");
        let name = self.required(doc, "name", span, "a drill").and_then(|v| {
            let s = self.string(v, "name")?;
            let ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                self.err(
                    &v.span(),
                    K::InvalidId,
                    format!("drill name {s:?} must be [a-z0-9][a-z0-9-]*, at most 64 characters"),
                );
                return None;
            }
            Some(s)
        });
        let description = doc.get("description").and_then(|v| self.string(v, "description"));
        let workflow = self.required(doc, "workflow", span, "a drill").and_then(|v| {
            let s = self.string(v, "workflow")?;
            if s.trim().is_empty() {
                self.err(&v.span(), K::InvalidValue, "`workflow` is empty: name the workflow file");
                return None;
            }
            Some(s)
        });
        let select = self
            .required(doc, "select", span, "a drill")
            .and_then(|v| self.table(v, "select").map(|t| (t, v.span())))
            .and_then(|(t, s)| self.select(t, &s));
        let restore_point = match doc.get("restore_point") {
            None => Some(DrillPoint::Latest),
            Some(v) => match self.string(v, "restore_point")?.trim() {
                "latest" => Some(DrillPoint::Latest),
                other => match humantime::parse_duration(other) {
                    Ok(d) => Some(DrillPoint::Age(d)),
                    Err(_) => {
                        self.err(
                            &v.span(),
                            K::InvalidValue,
                            format!("`restore_point` = {other:?} is neither \"latest\" nor an age such as \"1h\""),
                        );
                        None
                    }
                },
            },
        };
        let mode = match doc.get("mode") {
            None => Some(DrillMode::Isolated),
            Some(v) => self
                .one_of(v, "mode", MODES)
                .map(|m| if m == "as-new" { DrillMode::AsNew } else { DrillMode::Isolated }),
        };
        let rpo_probe = match doc.get("rpo") {
            None => None,
            Some(v) => self.table(v, "rpo").and_then(|t| {
                self.known_keys(t, COMMAND_KEYS, "[rpo]");
                self.command(t, &v.span(), "[rpo]")
            }),
        };
        let objectives = self
            .required(doc, "objectives", span, "a drill")
            .and_then(|v| self.table(v, "objectives").map(|t| (t, v.span())))
            .and_then(|(t, s)| {
                self.known_keys(t, OBJECTIVE_KEYS, "[objectives]");
                let rto = self
                    .required(t, "rto", &s, "[objectives]")
                    .and_then(|v| self.duration(v, "rto"));
                let rpo = match t.get("rpo") {
                    Some(v) => Some(self.duration(v, "rpo")?),
                    None => None,
                };
                Some(Objectives { rto: rto?, rpo })
            });
        let needs_probe = restore_point == Some(DrillPoint::Latest)
            || objectives.is_some_and(|o| o.rpo.is_some());
        if needs_probe && rpo_probe.is_none() && doc.get("rpo").is_none() {
            self.err(
                span,
                K::MissingKey,
                "a drill restoring to \"latest\" or with an `rpo` objective needs `[rpo]`: the command (program, args) that prints the source's newest recoverable instant as JSON {\"newest\": \"<RFC 3339>\", \"now\": \"<RFC 3339>\"}",
            );
        }
        let cleanup = match doc.get("cleanup") {
            None => Some(Cleanup { keep: Duration::ZERO, commands: Vec::new(), remaining: None }),
            Some(v) => self.table(v, "cleanup").and_then(|t| self.cleanup(t)),
        };
        let schedule = self.schedule(doc);
        Some(Drill {
            name: name?,
            description,
            workflow: workflow?,
            select: select?,
            restore_point: restore_point?,
            mode: mode?,
            rpo_probe,
            objectives: objectives?,
            cleanup: cleanup?,
            schedule: schedule?,
        })
    }

    fn select(&mut self, t: &DeTable<'_>, span: &Span) -> Option<Selection> {
        self.known_keys(t, SELECT_KEYS, "[select]");
        let kind = self
            .required(t, "kind", span, "[select]")
            .and_then(|v| self.one_of(v, "kind", &["command", "sql"]));
        let selector = match kind.as_deref() {
            Some("command") => {
                for key in ["connection", "sql"] {
                    if let Some((k, _)) = t.get_key_value(key) {
                        self.err(
                            &k.span(),
                            K::InvalidValue,
                            format!("`{key}` belongs to a `sql` selector, not a `command` one"),
                        );
                    }
                }
                self.command(t, span, "a `command` selector").map(Selector::Command)
            }
            Some(_) => {
                for key in ["program", "args"] {
                    if let Some((k, _)) = t.get_key_value(key) {
                        self.err(
                            &k.span(),
                            K::InvalidValue,
                            format!("`{key}` belongs to a `command` selector, not a `sql` one"),
                        );
                    }
                }
                let conn = self
                    .required(t, "connection", span, "a `sql` selector")
                    .and_then(|v| self.string(v, "connection"));
                let sql = self
                    .required(t, "sql", span, "a `sql` selector")
                    .and_then(|v| self.string(v, "sql"));
                conn.zip(sql).map(|(connection, sql)| Selector::Sql { connection, sql })
            }
            None => None,
        };
        let strategy_name = match t.get("strategy") {
            Some(v) => self.one_of(v, "strategy", STRATEGIES),
            None => Some("random".to_owned()),
        };
        let allowed_with = |key: &str| match key {
            "seed" => "random",
            "within" => "least-recently-drilled",
            _ => "list",
        };
        if let Some(s) = &strategy_name {
            for key in ["seed", "within", "ids"] {
                if let Some((k, _)) = t.get_key_value(key)
                    && allowed_with(key) != s
                {
                    self.err(
                        &k.span(),
                        K::InvalidValue,
                        format!(
                            "`{key}` applies to strategy = \"{}\", not \"{s}\"",
                            allowed_with(key)
                        ),
                    );
                }
            }
        }
        let strategy = match strategy_name.as_deref() {
            Some("random") => {
                let seed = match t.get("seed") {
                    Some(v) => match self.integer(v, "seed")? {
                        n if n >= 0 => Some(n.unsigned_abs()),
                        n => {
                            self.err(
                                &v.span(),
                                K::InvalidValue,
                                format!("`seed` = {n} must not be negative"),
                            );
                            return None;
                        }
                    },
                    None => None,
                };
                Some(Strategy::Random { seed })
            }
            Some("least-recently-drilled") => self
                .required(t, "within", span, "strategy = \"least-recently-drilled\"")
                .and_then(|v| self.duration(v, "within"))
                .map(|within| Strategy::LeastRecentlyDrilled { within }),
            Some(_) => self.required(t, "ids", span, "strategy = \"list\"").and_then(|v| {
                let ids = self.strings(v, "ids")?;
                if ids.is_empty() {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        "`ids` is empty: list the tenants to drill",
                    );
                    return None;
                }
                Some(Strategy::List { ids })
            }),
            None => None,
        };
        let sample = match t.get("sample") {
            Some(v) => {
                let n = self.integer(v, "sample")?;
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        self.err(
                            &v.span(),
                            K::InvalidValue,
                            format!("`sample` = {n} must be at least 1"),
                        );
                        None
                    }
                }
            }
            None => match &strategy {
                Some(Strategy::List { ids }) => u32::try_from(ids.len()).ok(),
                _ => {
                    self.err(
                        span,
                        K::MissingKey,
                        "[select] needs `sample`: how many tenants to drill",
                    );
                    None
                }
            },
        };
        if let (Some(Strategy::List { ids }), Some(n), Some(v)) =
            (&strategy, sample, t.get("sample"))
            && n as usize > ids.len()
        {
            self.err(
                &v.span(),
                K::InvalidValue,
                format!("`sample` = {n} is more than the {} ids listed", ids.len()),
            );
        }
        Some(Selection { selector: selector?, sample: sample?, strategy: strategy? })
    }

    fn cleanup(&mut self, t: &DeTable<'_>) -> Option<Cleanup> {
        self.known_keys(t, CLEANUP_KEYS, "[cleanup]");
        let keep = match t.get("keep") {
            Some(v) => self.duration(v, "keep"),
            None => Some(Duration::ZERO),
        };
        let mut commands = Vec::new();
        let mut ok = true;
        if let Some(v) = t.get("commands") {
            match v.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::Table(c) => {
                                self.known_keys(c, COMMAND_KEYS, "a cleanup command");
                                match self.command(c, &item.span(), "a cleanup command") {
                                    Some(c) => commands.push(c),
                                    None => ok = false,
                                }
                            }
                            _ => {
                                self.wrong(item, "commands[]", "a table { program, args }");
                                ok = false;
                            }
                        }
                    }
                }
                _ => {
                    self.wrong(v, "commands", "an array of { program, args } tables");
                    ok = false;
                }
            }
        }
        let remaining = match t.get("remaining") {
            None => Some(None),
            Some(v) => self.table(v, "remaining").and_then(|c| {
                self.known_keys(c, COMMAND_KEYS, "[cleanup] remaining");
                self.command(c, &v.span(), "[cleanup] remaining").map(Some)
            }),
        };
        let remaining = remaining?;
        ok.then_some(Cleanup { keep: keep?, commands, remaining })
    }

    fn schedule(&mut self, doc: &DeTable<'_>) -> Option<Option<Schedule>> {
        let timezone = match doc.get("timezone") {
            Some(v) => {
                let tz = self.string(v, "timezone")?;
                if !valid_timezone(&tz) {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        format!("`timezone` = {tz:?} is not UTC or a fixed offset such as +02:00"),
                    );
                    return None;
                }
                if doc.get("schedule").is_none() {
                    self.err(
                        &v.span(),
                        K::InvalidValue,
                        "`timezone` without `schedule`: it applies to the schedule",
                    );
                }
                tz
            }
            None => "UTC".to_owned(),
        };
        let Some(v) = doc.get("schedule") else { return Some(None) };
        let cron = self.string(v, "schedule")?;
        if let Err(e) = cron.parse::<croner::Cron>() {
            self.err(
                &v.span(),
                K::InvalidValue,
                format!(
                    "`schedule` = {cron:?} is not a cron expression such as \"0 5 * * *\" ({e})"
                ),
            );
            return None;
        }
        Some(Some(Schedule { cron, timezone }))
    }
}

fn valid_timezone(tz: &str) -> bool {
    if tz == "UTC" || tz == "Z" {
        return true;
    }
    let b = tz.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| b[i].is_ascii_digit())
        && (b[1] - b'0') * 10 + (b[2] - b'0') <= 14
        && (b[4] - b'0') * 10 + (b[5] - b'0') < 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezones() {
        for ok in ["UTC", "+02:00", "-09:30", "+14:00"] {
            assert!(valid_timezone(ok), "{ok}");
        }
        for bad in ["utc", "Europe/Paris", "+2:00", "+15:00", "+02:60", ""] {
            assert!(!valid_timezone(bad), "{bad}");
        }
    }
}
