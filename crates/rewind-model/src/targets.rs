//! The targets file (DESIGN.md "Targets file"): CSV with a header `id,kind,<attr>...` (a cell with
//! `;` is a list) or JSON Lines (`{"id":..,"kind":..,"<attr>": "v" | ["v",..]}`), chosen by
//! extension. Every error names the line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::diag::{Diagnostics, ErrorKind as K, Sink, to_u32};
use crate::ids::{AttrName, TargetId};
use crate::workflow::{Condition, Workflow};

/// The format of a targets file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetsFormat {
    /// `.csv`
    Csv,
    /// `.jsonl` or `.ndjson`
    JsonLines,
}

impl TargetsFormat {
    /// The format a file name's extension implies.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            _ => None,
        }
    }
}

/// An attribute value: one string, or a list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    /// A single value.
    One(String),
    /// A list (`a;b` in CSV, an array in JSON Lines).
    List(Vec<String>),
}

impl AttrValue {
    /// The values: one, or the list's.
    pub fn values(&self) -> &[String] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::List(l) => l,
        }
    }

    /// `when` semantics: equals `v`, or (a list) contains it.
    pub fn matches(&self, v: &str) -> bool {
        self.values().iter().any(|x| x == v)
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(v) => f.write_str(v),
            Self::List(l) => f.write_str(&l.join(";")),
        }
    }
}

/// One target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Its UUID.
    pub id: TargetId,
    /// Its kind as the file states it (checked against the workflow's `target_kind`).
    pub kind: String,
    /// Attributes.
    pub attrs: BTreeMap<AttrName, AttrValue>,
    /// Line in the targets file (1-based).
    #[serde(skip)]
    pub line: u32,
}

impl Target {
    /// Whether every condition holds.
    pub fn satisfies(&self, when: &[Condition]) -> bool {
        when.iter().all(|c| self.attrs.get(&c.attr).is_some_and(|v| v.matches(&c.value)))
    }
}

/// The targets of a plan, in file order (the order breaks scheduling ties).
#[derive(Clone, Debug)]
pub struct TargetSet {
    file: String,
    targets: Vec<Target>,
}

impl TargetSet {
    /// Parses a targets file. `file` names it in diagnostics; no file is read.
    pub fn parse(file: &str, text: &str, format: TargetsFormat) -> Result<Self, Diagnostics> {
        let mut sink = Sink::new(file, text);
        let targets = match format {
            TargetsFormat::Csv => parse_csv(&mut sink, text),
            TargetsFormat::JsonLines => parse_jsonl(&mut sink, text),
        };
        let mut first: HashMap<TargetId, u32> = HashMap::with_capacity(targets.len());
        for t in &targets {
            if let Some(line) = first.get(&t.id) {
                sink.at_line(
                    t.line,
                    K::DuplicateTarget,
                    format!("duplicate target id {}; first on line {line}", t.id),
                );
            } else {
                first.insert(t.id, t.line);
            }
        }
        if targets.is_empty() && sink.diags.is_empty() {
            sink.at_line(1, K::NoTargets, "the file lists no targets");
        }
        sink.finish()?;
        Ok(Self { file: file.to_owned(), targets })
    }

    /// Wraps targets made in code (benchmarks, tests). Ids must be unique.
    pub fn from_targets(file: &str, targets: Vec<Target>) -> Self {
        Self { file: file.to_owned(), targets }
    }

    /// The file name given at parse time.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The targets, in file order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets as a CSV targets file (`id,kind,<attrs>...`, attributes in name order, lists
    /// joined with `;`): what [`TargetSet::parse`] reads back to the same targets.
    pub fn to_csv(&self) -> String {
        let names: std::collections::BTreeSet<&AttrName> =
            self.targets.iter().flat_map(|t| t.attrs.keys()).collect();
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let header = ["id", "kind"]
            .into_iter()
            .map(str::to_owned)
            .chain(names.iter().map(|n| n.to_string()));
        // Writing to a Vec cannot fail.
        let _ = w.write_record(header.collect::<Vec<_>>());
        for t in &self.targets {
            let mut row = vec![t.id.to_string(), t.kind.clone()];
            row.extend(
                names.iter().map(|n| t.attrs.get(*n).map(ToString::to_string).unwrap_or_default()),
            );
            let _ = w.write_record(&row);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// Checks the targets against what `workflow` needs of them: the kind it restores (a list of
    /// app IDs handed to a site restore is refused here), and every attribute its scopes, `when`s
    /// and templates read.
    pub fn check(&self, workflow: &Workflow) -> Result<(), Diagnostics> {
        let mut sink = Sink::new(&self.file, "");
        let kind = workflow.target_kind.as_str();
        let uses = workflow.attribute_uses();
        let group_attrs: HashSet<&AttrName> = workflow
            .steps
            .iter()
            .filter_map(|s| match &s.scope {
                crate::Scope::Group(a) => Some(a),
                _ => None,
            })
            .collect();
        let scalar = workflow.scalar_group_attributes();
        for t in &self.targets {
            if t.kind != kind {
                sink.at_line(
                    t.line,
                    K::WrongKind,
                    format!(
                        "target {} is of kind `{}`, but workflow `{}` restores `{kind}` targets",
                        t.id, t.kind, workflow.name
                    ),
                );
            }
            let mut reported: HashSet<&AttrName> = HashSet::new();
            for u in &uses {
                if !t.attrs.contains_key(&u.attr) && reported.insert(&u.attr) {
                    sink.at_line(
                        t.line,
                        K::MissingAttribute,
                        format!(
                            "target {} has no attribute `{}`, which step `{}` needs ({})",
                            t.id, u.attr, u.step, u.how
                        ),
                    );
                }
            }
            for attr in &group_attrs {
                if let Some(v) = t.attrs.get(*attr)
                    && v.values().iter().all(String::is_empty)
                {
                    sink.at_line(
                        t.line,
                        K::MissingAttribute,
                        format!(
                            "target {} has an empty `{attr}`, which a group:{attr} step needs",
                            t.id
                        ),
                    );
                }
            }
            for (attr, step) in &scalar {
                if let Some(AttrValue::List(l)) = t.attrs.get(attr)
                    && l.len() > 1
                    && reported.insert(attr)
                {
                    sink.at_line(
                            t.line,
                            K::InvalidValue,
                            format!(
                                "target {} has several `{attr}` values ({}), but step `{step}` reads the output \
                                 of the one group:{attr} instance of its target",
                                t.id,
                                l.join(";")
                            ),
                        );
                }
            }
        }
        sink.finish()
    }
}

fn cell_value(cell: &str) -> AttrValue {
    if cell.contains(';') {
        AttrValue::List(
            cell.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        )
    } else {
        AttrValue::One(cell.to_owned())
    }
}

fn parse_csv(sink: &mut Sink<'_>, text: &str) -> Vec<Target> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            let line = csv_line(sink, text, &e);
            sink.at_line(line, K::Syntax, format!("cannot read the CSV header: {e}"));
            return Vec::new();
        }
    };
    // Line numbers come from byte offsets: the csv crate does not count comment lines.
    let header_line = headers.position().map_or(1, |p| sink.line_at(record_start(text, byte(p))));
    let mut id_col = None;
    let mut kind_col = None;
    let mut attr_cols: Vec<(usize, AttrName)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, h) in headers.iter().enumerate() {
        if !seen.insert(h) {
            sink.at_line(
                header_line,
                K::Syntax,
                format!("column `{h}` appears twice in the header"),
            );
            continue;
        }
        match h {
            "id" => id_col = Some(i),
            "kind" => kind_col = Some(i),
            _ => match AttrName::new(h) {
                Ok(a) => attr_cols.push((i, a)),
                Err(e) => sink.at_line(header_line, K::InvalidId, format!("header: {e}")),
            },
        }
    }
    let (Some(id_col), Some(kind_col)) = (id_col, kind_col) else {
        sink.at_line(
            header_line,
            K::MissingKey,
            format!(
                "the CSV header must name the columns `id` and `kind` (it has: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        );
        return Vec::new();
    };
    if !sink.diags.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = csv_line(sink, text, &e);
                sink.at_line(line, K::Syntax, e.to_string());
                continue;
            }
        };
        let line = record.position().map_or(0, |p| sink.line_at(record_start(text, byte(p))));
        if record.iter().all(str::is_empty) {
            continue;
        }
        let raw_id = record.get(id_col).unwrap_or("");
        let id = match raw_id.parse::<TargetId>() {
            Ok(id) => id,
            Err(e) => {
                sink.at_line(line, K::InvalidTargetId, e.to_string());
                continue;
            }
        };
        let kind = record.get(kind_col).unwrap_or("").to_owned();
        let attrs = attr_cols
            .iter()
            .map(|(i, a)| (a.clone(), cell_value(record.get(*i).unwrap_or(""))))
            .collect();
        out.push(Target { id, kind, attrs, line });
    }
    out
}

fn byte(p: &csv::Position) -> usize {
    usize::try_from(p.byte()).unwrap_or(usize::MAX)
}

/// The csv crate positions a record at the start of the comment or blank lines before it: skip
/// them to reach the record's own line.
fn record_start(text: &str, mut at: usize) -> usize {
    while let Some(rest) = text.get(at..) {
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..len];
        if len == 0 || !(line.trim().is_empty() || line.starts_with('#')) {
            break;
        }
        at += len;
    }
    at
}

fn csv_line(sink: &Sink<'_>, text: &str, e: &csv::Error) -> u32 {
    e.position().map_or(1, |p| sink.line_at(record_start(text, byte(p))))
}

fn parse_jsonl(sink: &mut Sink<'_>, text: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = to_u32(i + 1);
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                sink.at_line(line, K::Syntax, "each line must be a JSON object");
                continue;
            }
            Err(e) => {
                sink.at_line(line, K::Syntax, format!("not JSON: {e}"));
                continue;
            }
        };
        let text_field = |key: &str, sink: &mut Sink<'_>| match obj.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                sink.at_line(line, K::InvalidType, format!("`{key}` must be a string"));
                None
            }
            None => {
                sink.at_line(line, K::MissingKey, format!("no `{key}`"));
                None
            }
        };
        let id = text_field("id", sink);
        let kind = text_field("kind", sink);
        let mut attrs = BTreeMap::new();
        let mut ok = true;
        for (k, v) in &obj {
            if k == "id" || k == "kind" {
                continue;
            }
            let attr = match AttrName::new(k) {
                Ok(a) => a,
                Err(e) => {
                    sink.at_line(line, K::InvalidId, e.to_string());
                    ok = false;
                    continue;
                }
            };
            let value = match v {
                serde_json::Value::String(s) => AttrValue::One(s.clone()),
                serde_json::Value::Array(items) => {
                    let strings: Option<Vec<String>> =
                        items.iter().map(|x| x.as_str().map(str::to_owned)).collect();
                    match strings {
                        Some(list) => AttrValue::List(list),
                        None => {
                            sink.at_line(
                                line,
                                K::InvalidType,
                                format!("`{k}` must be a string or an array of strings"),
                            );
                            ok = false;
                            continue;
                        }
                    }
                }
                _ => {
                    sink.at_line(
                        line,
                        K::InvalidType,
                        format!("`{k}` must be a string or an array of strings"),
                    );
                    ok = false;
                    continue;
                }
            };
            attrs.insert(attr, value);
        }
        let (Some(id), Some(kind)) = (id, kind) else { continue };
        let id = match id.parse::<TargetId>() {
            Ok(id) => id,
            Err(e) => {
                sink.at_line(line, K::InvalidTargetId, e.to_string());
                continue;
            }
        };
        if ok {
            out.push(Target { id, kind, attrs, line });
        }
    }
    out
}
