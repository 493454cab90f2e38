//! Located diagnostics: every error names the file, line and column, the step when there is one,
//! and the offending value. Parsers collect all of them so one run of `rewind check` shows every
//! mistake in a file at once.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

use crate::ids::StepId;

/// What kind of mistake a diagnostic reports. Stable: scripts and tests match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file is not valid TOML, CSV or JSON.
    Syntax,
    /// A key that the format does not define (a typo such as `retrys`).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong type (a number where a string belongs).
    InvalidType,
    /// A value of the right type that is out of range or malformed.
    InvalidValue,
    /// A step id, resource name, attribute name or kind that breaks the naming rules.
    InvalidId,
    /// Two steps share an id.
    DuplicateStep,
    /// `needs` names a step that does not exist.
    UnknownNeed,
    /// The same step appears twice in one `needs`.
    DuplicateNeed,
    /// Steps depend on each other in a circle.
    Cycle,
    /// `resource` names a pool that `[resources]` does not declare.
    UnknownResource,
    /// A pool capacity below 1.
    InvalidCapacity,
    /// A duration humantime cannot read (`5 mins`, `2x`).
    InvalidDuration,
    /// A scope other than `run`, `target` or `group:<attr>`.
    InvalidScope,
    /// An action kind no executor implements.
    UnknownAction,
    /// A `{{...}}` placeholder that cannot resolve for the step.
    UnresolvedTemplate,
    /// `{{...}}` spliced into SQL text instead of bound as a parameter.
    TemplateInSql,
    /// A `when` condition that cannot apply.
    InvalidWhen,
    /// `connection` names a connection that `[connections]` does not declare.
    UnknownConnection,
    /// A `{{...}}` placeholder in a command's `program`: the program comes from the workflow.
    TemplateInProgram,
    /// A `{{...}}` placeholder where it would decide a connection URL's scheme.
    TemplateInScheme,
    /// A `{{...}}` placeholder in a connection URL's query key (it would choose the option).
    TemplateInQueryKey,
    /// A password written in a connection URL (it would be stored with every run).
    LiteralSecret,
    /// A target id that is not a UUID.
    InvalidTargetId,
    /// The same target id twice.
    DuplicateTarget,
    /// A target of another kind than the workflow restores (the incident's site-ID-for-app-ID).
    WrongKind,
    /// A target lacks an attribute that a scope, a `when` or a template needs.
    MissingAttribute,
    /// A targets file with no targets.
    NoTargets,
}

impl ErrorKind {
    /// The kebab-case code shown in messages (`unknown-key`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::UnknownKey => "unknown-key",
            Self::MissingKey => "missing-key",
            Self::InvalidType => "invalid-type",
            Self::InvalidValue => "invalid-value",
            Self::InvalidId => "invalid-id",
            Self::DuplicateStep => "duplicate-step",
            Self::UnknownNeed => "unknown-need",
            Self::DuplicateNeed => "duplicate-need",
            Self::Cycle => "cycle",
            Self::UnknownResource => "unknown-resource",
            Self::InvalidCapacity => "invalid-capacity",
            Self::InvalidDuration => "invalid-duration",
            Self::InvalidScope => "invalid-scope",
            Self::UnknownAction => "unknown-action",
            Self::UnresolvedTemplate => "unresolved-template",
            Self::TemplateInSql => "template-in-sql",
            Self::InvalidWhen => "invalid-when",
            Self::UnknownConnection => "unknown-connection",
            Self::TemplateInProgram => "template-in-program",
            Self::TemplateInScheme => "template-in-scheme",
            Self::TemplateInQueryKey => "template-in-query-key",
            Self::LiteralSecret => "literal-secret",
            Self::InvalidTargetId => "invalid-target-id",
            Self::DuplicateTarget => "duplicate-target",
            Self::WrongKind => "wrong-kind",
            Self::MissingAttribute => "missing-attribute",
            Self::NoTargets => "no-targets",
        }
    }
}

/// Where in a file a diagnostic points. Lines and columns count from 1; columns count characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file name as the user gave it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One located mistake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// What kind of mistake.
    pub kind: ErrorKind,
    /// Where it is.
    pub location: Location,
    /// The step it belongs to, when it belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error[{}]: ", self.location, self.kind.code())?;
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All the mistakes found in one input, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The diagnostics as a slice.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any diagnostic is of `kind`.
    pub fn has(&self, kind: ErrorKind) -> bool {
        self.0.iter().any(|d| d.kind == kind)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of a text to lines and columns.
#[derive(Clone, Debug)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// 1-based line and character column of a byte offset.
    pub(crate) fn locate(&self, text: &str, offset: usize) -> (u32, u32) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        (to_u32(line), to_u32(column))
    }
}

pub(crate) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Collects diagnostics against one source text.
pub(crate) struct Sink<'a> {
    file: &'a str,
    text: &'a str,
    lines: LineIndex,
    pub(crate) diags: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Self { file, text, lines: LineIndex::new(text), diags: Vec::new() }
    }

    /// The source text.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_at(&self, offset: usize) -> u32 {
        self.lines.locate(self.text, offset).0
    }

    pub(crate) fn location(&self, span: &Range<usize>) -> Location {
        let (line, column) = self.lines.locate(self.text, span.start);
        Location { file: self.file.to_owned(), line, column }
    }

    pub(crate) fn at(
        &mut self,
        span: &Range<usize>,
        kind: ErrorKind,
        step: Option<&StepId>,
        message: impl Into<String>,
    ) {
        let location = self.location(span);
        self.diags.push(Diagnostic {
            kind,
            location,
            step: step.cloned(),
            message: message.into(),
        });
    }

    /// A diagnostic at a known line (CSV and JSON Lines records).
    pub(crate) fn at_line(&mut self, line: u32, kind: ErrorKind, message: impl Into<String>) {
        let location = Location { file: self.file.to_owned(), line, column: 1 };
        self.diags.push(Diagnostic { kind, location, step: None, message: message.into() });
    }

    pub(crate) fn finish(mut self) -> Result<(), Diagnostics> {
        if self.diags.is_empty() {
            Ok(())
        } else {
            self.diags.sort_by_key(|d| (d.location.line, d.location.column));
            Err(Diagnostics(self.diags))
        }
    }
}

/// The closest candidate to `word`, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, c)| d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ` (did you mean `x`?)`, or nothing.
pub(crate) fn suggestion<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    did_you_mean(word, candidates).map_or_else(String::new, |c| format!(" (did you mean `{c}`?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_character_columns() {
        let text = "a = 1\nbé = 2\n\nlast";
        let idx = LineIndex::new(text);
        assert_eq!(idx.locate(text, 0), (1, 1));
        assert_eq!(idx.locate(text, 6), (2, 1));
        assert_eq!(idx.locate(text, 9), (2, 3)); // after the two-byte 'é'
        assert_eq!(idx.locate(text, 14), (3, 1));
        assert_eq!(idx.locate(text, 15), (4, 1));
        assert_eq!(idx.locate(text, 999), (4, 5));
    }

    #[test]
    fn suggests_close_names_only() {
        let keys = ["retries", "timeout", "backoff"];
        assert_eq!(did_you_mean("retrys", keys), Some("retries"));
        assert_eq!(did_you_mean("timout", keys), Some("timeout"));
        assert_eq!(did_you_mean("colour", keys), None);
    }
}
