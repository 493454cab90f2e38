//! `{{...}}` templates in action arguments, parameters and connection URLs, and `${VAR}`
//! references to the environment rewind runs in.
//!
//! A template is parsed once, when the workflow is read, into literal text, typed
//! [`Placeholder`]s and environment references; whether each placeholder can resolve for its
//! step is checked then too. Rendering is pure: the caller supplies the values.
//!
//! Connection URLs are [`UrlTemplate`]s (`template/url.rs`): each placeholder is placed in its
//! URL component when the workflow is read, and its value encoded for it when rendered.

mod url;

use std::fmt;

pub use url::{
    Fill, UrlPart, UrlRefusal, UrlRenderError, UrlTemplate, UrlTemplateError, form_decode,
    percent_decode, percent_encode,
};

use crate::ids::{AttrName, StepId};

/// A value a template can refer to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{{run.id}}`
    RunId,
    /// `{{run.restore_point}}`
    RestorePoint,
    /// `{{target.id}}` (target scope)
    TargetId,
    /// `{{target.kind}}` (target scope)
    TargetKind,
    /// `{{target.attr.NAME}}` (target scope)
    TargetAttr(AttrName),
    /// `{{group.value}}` (group scope)
    GroupValue,
    /// `{{step.id}}`
    StepId,
    /// `{{attempt}}`: 1 for the first attempt.
    Attempt,
    /// `{{needs.STEP.KEY}}`: key `KEY` of the JSON output of dependency `STEP`.
    Needs {
        /// The dependency.
        step: StepId,
        /// The output key.
        key: String,
    },
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RunId => f.write_str("run.id"),
            Self::RestorePoint => f.write_str("run.restore_point"),
            Self::TargetId => f.write_str("target.id"),
            Self::TargetKind => f.write_str("target.kind"),
            Self::TargetAttr(a) => write!(f, "target.attr.{a}"),
            Self::GroupValue => f.write_str("group.value"),
            Self::StepId => f.write_str("step.id"),
            Self::Attempt => f.write_str("attempt"),
            Self::Needs { step, key } => write!(f, "needs.{step}.{key}"),
        }
    }
}

const KNOWN: &str = "run.id, run.restore_point, target.id, target.kind, target.attr.NAME, \
                     group.value, step.id, attempt, needs.STEP.KEY";

impl Placeholder {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "run.id" => Self::RunId,
            "run.restore_point" => Self::RestorePoint,
            "target.id" => Self::TargetId,
            "target.kind" => Self::TargetKind,
            "group.value" => Self::GroupValue,
            "step.id" => Self::StepId,
            "attempt" => Self::Attempt,
            _ => {
                if let Some(attr) = name.strip_prefix("target.attr.") {
                    let attr = AttrName::new(attr).map_err(|e| format!("`{{{{{name}}}}}`: {e}"))?;
                    Self::TargetAttr(attr)
                } else if let Some(rest) = name.strip_prefix("needs.") {
                    // Step ids contain dots; output keys do not: split at the last dot.
                    let (step, key) = rest.rsplit_once('.').ok_or_else(|| {
                        format!(
                            "`{{{{{name}}}}}` must be `needs.STEP.KEY`, with the output key last"
                        )
                    })?;
                    let step = StepId::new(step).map_err(|e| format!("`{{{{{name}}}}}`: {e}"))?;
                    if key.is_empty()
                        || !key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                    {
                        return Err(format!(
                            "`{{{{{name}}}}}`: output key {key:?} must be letters, digits, '_' or '-'"
                        ));
                    }
                    Self::Needs { step, key: key.to_owned() }
                } else {
                    return Err(format!("unknown placeholder `{{{{{name}}}}}` (known: {KNOWN})"));
                }
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Placeholder),
    Env(String),
}

/// What a template refers to: a placeholder, or an environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ref<'a> {
    /// `{{...}}`
    Placeholder(&'a Placeholder),
    /// `${NAME}`
    Env(&'a str),
}

fn is_env_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A parsed template string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

/// A template that cannot be parsed: an unclosed `{{` or an unknown placeholder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
}

impl Template {
    /// Parses `raw`. `{{ name }}` (inner spaces allowed) is a placeholder and `${NAME}` an
    /// environment variable; everything else is literal text. Single braces and a `$` not
    /// followed by `{` are literal.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        loop {
            let next = match (rest.find("{{"), rest.find("${")) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(at) = next else { break };
            text.push_str(&rest[..at]);
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            if rest[at..].starts_with("{{") {
                let after = &rest[at + 2..];
                let close = after.find("}}").ok_or_else(|| TemplateError {
                    message: format!("unclosed `{{{{` in {raw:?}"),
                })?;
                let name = after[..close].trim();
                parts.push(Part::Var(
                    Placeholder::parse(name).map_err(|message| TemplateError { message })?,
                ));
                rest = &after[close + 2..];
            } else {
                let after = &rest[at + 2..];
                let close = after.find('}').ok_or_else(|| TemplateError {
                    message: format!("unclosed `${{` in {raw:?}"),
                })?;
                let name = &after[..close];
                if !is_env_name(name) {
                    return Err(TemplateError {
                        message: format!(
                            "`${{{name}}}` is not an environment variable reference; use `${{NAME}}` with letters, digits and `_`"
                        ),
                    });
                }
                parts.push(Part::Env(name.to_owned()));
                rest = &after[close + 1..];
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { raw: raw.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The placeholders it uses, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) | Part::Env(_) => None,
        })
    }

    /// The environment variables it reads, in order.
    pub fn env_vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Env(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether the template is plain text.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders the template, asking `value` for each placeholder and environment variable.
    pub fn render<E>(
        &self,
        mut value: impl FnMut(Ref<'_>) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::with_capacity(self.raw.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&value(Ref::Placeholder(v))?),
                Part::Env(name) => out.push_str(&value(Ref::Env(name))?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t =
            Template::parse("--site={{ target.id }}/{{needs.catalog.undelete.url}}{x}").unwrap();
        let vars: Vec<String> = t.placeholders().map(ToString::to_string).collect();
        assert_eq!(vars, ["target.id", "needs.catalog.undelete.url"]);
        let out: Result<String, ()> = t.render(|r| match r {
            Ref::Placeholder(p) => Ok(format!("<{p}>")),
            Ref::Env(e) => Ok(format!("[{e}]")),
        });
        assert_eq!(out.unwrap(), "--site=<target.id>/<needs.catalog.undelete.url>{x}");
        assert!(Template::parse("plain $HOME {x}").unwrap().is_literal());
    }

    #[test]
    fn environment_references() {
        let t =
            Template::parse("sandbox://${SANDBOX}?store=tracker-{{target.attr.shard}}$5").unwrap();
        assert_eq!(t.env_vars().collect::<Vec<_>>(), ["SANDBOX"]);
        let out: Result<String, ()> = t.render(|r| match r {
            Ref::Placeholder(_) => Ok("s03".into()),
            Ref::Env(_) => Ok("/tmp/demo".into()),
        });
        assert_eq!(out.unwrap(), "sandbox:///tmp/demo?store=tracker-s03$5");
        assert!(Template::parse("${SANDBOX").unwrap_err().message.contains("unclosed `${`"));
        assert!(
            Template::parse("${SAND BOX}")
                .unwrap_err()
                .message
                .contains("not an environment variable reference")
        );
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        let e = Template::parse("{{target.nonsense}}").unwrap_err();
        assert!(e.message.contains("unknown placeholder `{{target.nonsense}}`"), "{e}");
        let e = Template::parse("a {{run.id").unwrap_err();
        assert!(e.message.contains("unclosed"), "{e}");
        let e = Template::parse("{{needs.x}}").unwrap_err();
        assert!(e.message.contains("needs.STEP.KEY"), "{e}");
        assert!(Template::parse("{{target.attr.}}").is_err());
    }
}
