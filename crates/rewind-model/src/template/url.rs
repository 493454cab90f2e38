//! Connection URL templates: a value rendered into a URL cannot change the URL's shape.
//!
//! [`UrlTemplate::parse`] reads the template's literal skeleton once (placeholders and `${VAR}`
//! references are opaque tokens there) and gives every `{{placeholder}}` the URL component it
//! lands in: scheme, user, password, host, port, path, query key, query value or fragment.
//! `sqlite:` URLs follow sqlx's own reading (everything up to the first `?` is the file path,
//! then `key=value` pairs); every other scheme is read as RFC 3986 says, with the userinfo
//! running to the last `@` of the authority, as drivers read it.
//!
//! [`UrlTemplate::render`] then encodes each placeholder's value for its component: user,
//! password, query key, query value and fragment keep only RFC 3986's unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) and percent-encode every other byte; a path does too, but keeps `/`
//! in a `sqlite:` file path (and a value may not make a `.` or `..` segment, nor start an
//! authority-less path with `//`); a host
//! must be a name or IPv4 address (letters, digits, `.`, `-`) or a bracketed IPv6 address, and a
//! port digits in 1..=65535, or the value is refused. A placeholder in the scheme is refused when
//! the workflow is read. `${VAR}` values are the operator's own and are spliced as they are.
//!
//! Every consumer decodes what this encodes: sqlx percent-decodes user, password, path and
//! (form-decodes) query values; rewind's own readers of query values use [`percent_decode`] and
//! [`form_decode`].

use std::fmt;

use super::{Part, Placeholder, Ref, Template, TemplateError};
use crate::secret::{REDACTED, redact_text};

/// The part of a URL a placeholder lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UrlPart {
    /// `postgres` in `postgres://…` (never from a placeholder).
    Scheme,
    /// The user name of the userinfo.
    User,
    /// The password of the userinfo (up to the authority's last `@`).
    Password,
    /// The host.
    Host,
    /// The port.
    Port,
    /// The path (a SQLite file, a PostgreSQL database).
    Path,
    /// The key of a `key=value` query pair.
    QueryKey,
    /// The value of a `key=value` query pair.
    QueryValue,
    /// What follows `#`.
    Fragment,
}

impl fmt::Display for UrlPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Scheme => "scheme",
            Self::User => "user name",
            Self::Password => "password",
            Self::Host => "host",
            Self::Port => "port",
            Self::Path => "path",
            Self::QueryKey => "query key",
            Self::QueryValue => "query value",
            Self::Fragment => "fragment",
        })
    }
}

/// What a placeholder renders to in a [`UrlTemplate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fill {
    /// A value: encoded for its component, or refused.
    Value(String),
    /// Text shown as it is, for display only (a dry run's `<run id>`).
    Shown(String),
}

/// A connection URL template, analysed (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlTemplate {
    template: Template,
    /// The component of each token (each character of a text part, each reference), `None`
    /// for delimiters (`://`, `@`, `:`, `?`, `&`, `=`, `#`).
    parts: Vec<Option<UrlPart>>,
    /// Whether `//` follows the scheme.
    authority: bool,
    /// Whether the scheme is `sqlite` (its path is a file path, `/` kept).
    sqlite: bool,
    /// Why the template holds a secret it should not, if it does.
    secret: Option<String>,
    /// The placeholder that would make the scheme or a query key, in a template read by
    /// [`UrlTemplate::parse_with_templated_shape`] (it never renders).
    templated_shape: Option<Placeholder>,
}

/// A URL template that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlTemplateError {
    /// The template does not parse.
    #[error("{0}")]
    Syntax(TemplateError),
    /// A placeholder would decide the scheme.
    #[error(
        "`{{{{{0}}}}}` would decide the URL's scheme: write the scheme (`postgres://`, \
         `sqlite://`, ...) literally, before any placeholder"
    )]
    Scheme(Placeholder),
    /// A placeholder would decide a query parameter's name.
    #[error(
        "`{{{{{0}}}}}` would decide a query parameter's name (`?host=`, `?options=` change \
         where and how it connects): write the names literally; a placeholder may be a value"
    )]
    QueryKey(Placeholder),
}

/// A value a URL cannot hold in its place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{{{{{placeholder}}}}}` = {shown} cannot be the {part} of this URL: {why}")]
pub struct UrlRefusal {
    /// The placeholder.
    pub placeholder: Placeholder,
    /// Where it lands.
    pub part: UrlPart,
    /// Its value, quoted, redacted (`***` in a password).
    pub shown: String,
    /// What a value there may be.
    pub why: String,
}

/// Why a URL template did not render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlRenderError<E> {
    /// A value could not be had (the caller's error).
    Value(E),
    /// A value was refused for its component.
    Refused(UrlRefusal),
}

impl<E: fmt::Display> fmt::Display for UrlRenderError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(e) => e.fmt(f),
            Self::Refused(r) => r.fmt(f),
        }
    }
}

/// One token of the skeleton.
#[derive(Clone, Copy)]
enum Tok {
    Char(char),
    /// A placeholder (`env: false`) or a `${VAR}`.
    Ref {
        env: bool,
    },
}

/// Query keys whose values are secrets.
const SECRET_KEYS: &[&str] = &["password", "pass", "pwd", "sslpassword"];

const NOT_STORED: &str = "write it as ${VAR} (read from the environment at run time) so it is \
                          never stored or printed";

impl UrlTemplate {
    /// Parses and analyses `raw`.
    pub fn parse(raw: &str) -> Result<Self, UrlTemplateError> {
        Self::read(raw, false)
    }

    /// Parses `raw` even when a placeholder makes its scheme or a query key (which rewind 0.1
    /// accepted): such a template can be shown and fingerprinted but never renders, and
    /// [`UrlTemplate::templated_shape`] names the placeholder. `None` for any other error.
    pub fn parse_with_templated_shape(raw: &str) -> Option<Self> {
        Self::read(raw, true).ok()
    }

    /// The placeholder that makes the scheme or a query key, in a template read by
    /// [`UrlTemplate::parse_with_templated_shape`].
    pub fn templated_shape(&self) -> Option<&Placeholder> {
        self.templated_shape.as_ref()
    }

    fn read(raw: &str, lenient: bool) -> Result<Self, UrlTemplateError> {
        let template = Template::parse(raw).map_err(UrlTemplateError::Syntax)?;
        let tokens = tokens(&template);
        let (parts, authority, pairs) = analyse(&tokens);
        let sqlite = template.raw.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("sqlite:"));
        // The placeholders, in order, with their token index.
        let mut placeholders = template.placeholders();
        let mut templated_shape = None;
        for (i, t) in tokens.iter().enumerate() {
            if let Tok::Ref { env } = t {
                let p = if *env { None } else { placeholders.next() };
                let Some(p) = p else { continue };
                let e = match parts[i] {
                    Some(UrlPart::Scheme) | None => UrlTemplateError::Scheme(p.clone()),
                    Some(UrlPart::QueryKey) => UrlTemplateError::QueryKey(p.clone()),
                    Some(_) => continue,
                };
                if !lenient {
                    return Err(e);
                }
                templated_shape.get_or_insert_with(|| p.clone());
            }
        }
        drop(placeholders);
        let secret = secret(&template, &tokens, &parts, &pairs);
        Ok(Self { template, parts, authority, sqlite, secret, templated_shape })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        self.template.as_str()
    }

    /// The underlying template (its placeholders and `${VAR}`s).
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The placeholders it uses, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.template.placeholders()
    }

    /// Each placeholder with the URL component it lands in, in order.
    pub fn components(&self) -> Vec<(&Placeholder, UrlPart)> {
        let tokens = tokens(&self.template);
        let refs = tokens
            .iter()
            .zip(&self.parts)
            .filter_map(|(t, p)| matches!(t, Tok::Ref { env: false }).then_some(*p));
        self.template
            .placeholders()
            .zip(refs)
            .map(|(p, part)| (p, part.unwrap_or(UrlPart::Scheme)))
            .collect()
    }

    /// Why the URL holds a secret that would be stored with every run (the workflow's text is),
    /// if it does: a userinfo password or a `password=`-style query value that is anything but
    /// one whole `${VAR}` (or empty).
    pub fn literal_secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Renders the URL, asking `value` for each placeholder and `${VAR}`. Placeholder values
    /// are encoded for their component or refused; `${VAR}` values and [`Fill::Shown`] text are
    /// spliced as they are.
    pub fn render<E>(
        &self,
        mut value: impl FnMut(Ref<'_>) -> Result<Fill, E>,
    ) -> Result<String, UrlRenderError<E>> {
        let mut out = String::with_capacity(self.template.raw.len() + 16);
        let mut t = 0;
        // The rendered path, and the placeholder values inside it.
        let mut path: Option<(usize, usize)> = None;
        let mut values: Vec<PathValue<'_>> = Vec::new();
        for part in &self.template.parts {
            let start = out.len();
            match part {
                Part::Text(s) => {
                    for c in s.chars() {
                        let start = out.len();
                        out.push(c);
                        note_path(&mut path, self.parts[t], start, out.len());
                        t += 1;
                    }
                    continue;
                }
                Part::Env(name) => match value(Ref::Env(name)).map_err(UrlRenderError::Value)? {
                    Fill::Value(v) | Fill::Shown(v) => out.push_str(&v),
                },
                Part::Var(p) => {
                    let comp = self.parts[t].unwrap_or(UrlPart::Scheme);
                    match value(Ref::Placeholder(p)).map_err(UrlRenderError::Value)? {
                        Fill::Shown(v) => out.push_str(&v),
                        Fill::Value(v) => {
                            encode_into(&mut out, comp, &v, self.sqlite).map_err(|why| {
                                UrlRenderError::Refused(refusal(p, comp, &v, why))
                            })?;
                            if comp == UrlPart::Path {
                                values.push(PathValue { start, end: out.len(), p, value: v });
                            }
                        }
                    }
                }
            }
            note_path(&mut path, self.parts[t], start, out.len());
            t += 1;
        }
        if let Some((start, end)) = path {
            check_path(&out, start, end, self.authority, &values)
                .map_err(UrlRenderError::Refused)?;
        }
        if self.sqlite {
            check_sqlite_file(&out, &values).map_err(UrlRenderError::Refused)?;
        }
        Ok(out)
    }
}

/// A placeholder's value in the rendered path, and where.
struct PathValue<'a> {
    start: usize,
    end: usize,
    p: &'a Placeholder,
    value: String,
}

fn note_path(path: &mut Option<(usize, usize)>, part: Option<UrlPart>, start: usize, end: usize) {
    if part == Some(UrlPart::Path) {
        let s = path.map_or(start, |(s, _)| s);
        *path = Some((s, end));
    }
}

impl fmt::Display for UrlTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for UrlTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.template.serialize(s)
    }
}

fn tokens(t: &Template) -> Vec<Tok> {
    let mut out = Vec::with_capacity(t.raw.len());
    for p in &t.parts {
        match p {
            Part::Text(s) => out.extend(s.chars().map(Tok::Char)),
            Part::Var(_) => out.push(Tok::Ref { env: false }),
            Part::Env(_) => out.push(Tok::Ref { env: true }),
        }
    }
    out
}

/// A query pair: the token ranges of its key and its value.
type Pair = (std::ops::Range<usize>, std::ops::Range<usize>);

/// The component of each token, whether `//` follows the scheme, and the query pairs.
fn analyse(tokens: &[Tok]) -> (Vec<Option<UrlPart>>, bool, Vec<Pair>) {
    use UrlPart as U;
    let n = tokens.len();
    let lit = |i: usize, c: char| matches!(tokens.get(i), Some(Tok::Char(x)) if *x == c);
    let mut parts = vec![Some(U::Scheme); n];
    let mut pairs = Vec::new();
    // The scheme runs to the first literal `:`; without one, everything is the scheme.
    let Some(colon) = (0..n).find(|&i| lit(i, ':')) else { return (parts, false, pairs) };
    parts[colon] = None;
    let scheme: Option<String> = tokens[..colon]
        .iter()
        .map(|t| match t {
            Tok::Char(c) => Some(c.to_ascii_lowercase()),
            Tok::Ref { .. } => None,
        })
        .collect();
    let sqlite = scheme.as_deref() == Some("sqlite");
    let mut i = colon + 1;
    let authority = lit(i, '/') && lit(i + 1, '/');
    if authority {
        parts[i] = None;
        parts[i + 1] = None;
        i += 2;
    }
    let mut set = |range: std::ops::Range<usize>, part: Option<UrlPart>| {
        for j in range {
            parts[j] = part;
        }
    };
    if sqlite {
        // sqlx: the file path up to the first `?`, then `key=value` pairs (no fragment).
        let q = (i..n).find(|&j| lit(j, '?')).unwrap_or(n);
        set(i..q, Some(U::Path));
        if q < n {
            set(q..q + 1, None);
            query(tokens, q + 1, n, &mut set, &mut pairs);
        }
        return (parts, authority, pairs);
    }
    if authority {
        let end = (i..n).find(|&j| lit(j, '/') || lit(j, '?') || lit(j, '#')).unwrap_or(n);
        let host_start = match (i..end).rev().find(|&j| lit(j, '@')) {
            Some(at) => {
                match (i..at).find(|&j| lit(j, ':')) {
                    Some(c) => {
                        set(i..c, Some(U::User));
                        set(c..c + 1, None);
                        set(c + 1..at, Some(U::Password));
                    }
                    None => set(i..at, Some(U::User)),
                }
                set(at..at + 1, None);
                at + 1
            }
            None => i,
        };
        // A bracketed IPv6 host holds `:`; the port's `:` comes after its `]`.
        let after_host = if lit(host_start, '[') {
            (host_start..end).find(|&j| lit(j, ']')).map_or(end, |j| j + 1)
        } else {
            host_start
        };
        match (after_host..end).find(|&j| lit(j, ':')) {
            Some(c) => {
                set(host_start..c, Some(U::Host));
                set(c..c + 1, None);
                set(c + 1..end, Some(U::Port));
            }
            None => set(host_start..end, Some(U::Host)),
        }
        i = end;
    }
    let q = (i..n).find(|&j| lit(j, '?') || lit(j, '#')).unwrap_or(n);
    set(i..q, Some(U::Path));
    let mut f = q;
    if q < n && lit(q, '?') {
        f = (q..n).find(|&j| lit(j, '#')).unwrap_or(n);
        set(q..q + 1, None);
        query(tokens, q + 1, f, &mut set, &mut pairs);
    }
    if f < n {
        set(f..f + 1, None);
        set(f + 1..n, Some(U::Fragment));
    }
    (parts, authority, pairs)
}

/// Marks `tokens[start..end]` as `key=value` pairs separated by `&`.
fn query(
    tokens: &[Tok],
    start: usize,
    end: usize,
    set: &mut impl FnMut(std::ops::Range<usize>, Option<UrlPart>),
    pairs: &mut Vec<Pair>,
) {
    let lit = |i: usize, c: char| matches!(tokens.get(i), Some(Tok::Char(x)) if *x == c);
    let mut s = start;
    while s <= end {
        let e = (s..end).find(|&j| lit(j, '&')).unwrap_or(end);
        match (s..e).find(|&j| lit(j, '=')) {
            Some(eq) => {
                set(s..eq, Some(UrlPart::QueryKey));
                set(eq..eq + 1, None);
                set(eq + 1..e, Some(UrlPart::QueryValue));
                pairs.push((s..eq, eq + 1..e));
            }
            None => set(s..e, Some(UrlPart::QueryKey)),
        }
        if e < end {
            set(e..e + 1, None);
        }
        s = e + 1;
    }
}

/// Why the template holds a secret the workflow's stored text would keep, if it does.
fn secret(
    template: &Template,
    tokens: &[Tok],
    parts: &[Option<UrlPart>],
    pairs: &[Pair],
) -> Option<String> {
    // The placeholder of each token that is one.
    let mut placeholders = template.placeholders();
    let names: Vec<Option<&Placeholder>> = tokens
        .iter()
        .map(|t| match t {
            Tok::Ref { env: false } => placeholders.next(),
            _ => None,
        })
        .collect();
    let judge = |range: &[usize], what: &str| -> Option<String> {
        match range {
            [] => None,
            [one] if matches!(tokens[*one], Tok::Ref { env: true }) => None,
            _ => Some(match range.iter().find_map(|&i| names[i]) {
                Some(p) => format!(
                    "the URL's {what} comes from `{{{{{p}}}}}`, and targets and outputs are \
                     stored with the run; {NOT_STORED}"
                ),
                None => format!("the URL holds a literal {what}; {NOT_STORED}"),
            }),
        }
    };
    let password: Vec<usize> =
        (0..tokens.len()).filter(|&i| parts[i] == Some(UrlPart::Password)).collect();
    if let Some(why) = judge(&password, "password") {
        return Some(why);
    }
    for (key, value) in pairs {
        let key: Option<String> = tokens[key.clone()]
            .iter()
            .map(|t| match t {
                Tok::Char(c) => Some(*c),
                Tok::Ref { .. } => None,
            })
            .collect();
        let Some(key) = key else { continue };
        let decoded = percent_decode(&key).unwrap_or(key);
        if SECRET_KEYS.contains(&decoded.to_ascii_lowercase().as_str()) {
            let range: Vec<usize> = value.clone().collect();
            if let Some(why) = judge(&range, &format!("`{decoded}=` value")) {
                return Some(why);
            }
        }
    }
    None
}

fn refusal(p: &Placeholder, part: UrlPart, value: &str, why: &str) -> UrlRefusal {
    let shown = if part == UrlPart::Password {
        REDACTED.to_owned()
    } else {
        format!("{:?}", redact_text(value))
    };
    UrlRefusal { placeholder: p.clone(), part, shown, why: why.to_owned() }
}

const HOST_RULE: &str = "a host is a name or an IPv4 address (letters, digits, `.`, `-`) or an \
                         IPv6 address in brackets";
const PORT_RULE: &str = "a port is a number from 1 to 65535";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `s` with every byte but RFC 3986's unreserved characters (and `/`, when `keep_slash`)
/// percent-encoded.
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    encode_bytes(&mut out, s, keep_slash);
    out
}

fn encode_bytes(out: &mut String, s: &str, keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Appends `v` encoded for `part`, or says why it cannot be there. A path keeps `/` in a
/// `sqlite:` URL (a file path) and encodes it elsewhere (a database name is one segment, and
/// sqlx drops the leading `/`s of a PostgreSQL path).
fn encode_into(out: &mut String, part: UrlPart, v: &str, sqlite: bool) -> Result<(), &'static str> {
    match part {
        UrlPart::Scheme => return Err("the scheme is written in the workflow"),
        UrlPart::User
        | UrlPart::Password
        | UrlPart::QueryKey
        | UrlPart::QueryValue
        | UrlPart::Fragment => encode_bytes(out, v, false),
        UrlPart::Path => encode_bytes(out, v, sqlite),
        UrlPart::Host => {
            if !is_host(v) {
                return Err(HOST_RULE);
            }
            out.push_str(v);
        }
        UrlPart::Port => {
            let ok = !v.is_empty()
                && v.len() <= 5
                && v.bytes().all(|b| b.is_ascii_digit())
                && v.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
            if !ok {
                return Err(PORT_RULE);
            }
            out.push_str(v);
        }
    }
    Ok(())
}

fn is_host(v: &str) -> bool {
    if let Some(inner) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Refuses a path whose placeholder values make a `.` or `..` segment (a URL parser would
/// remove it and another path would be used), or that starts with `//` where no authority was
/// written (it would become one).
fn check_path(
    out: &str,
    start: usize,
    end: usize,
    authority: bool,
    values: &[PathValue<'_>],
) -> Result<(), UrlRefusal> {
    // The first value with a byte in out[s..e].
    let within = |s: usize, e: usize| values.iter().find(|v| v.start < e && s < v.end);
    let path = &out[start..end];
    if !authority
        && path.starts_with("//")
        && let Some(v) = within(start, start + 2)
    {
        return Err(refusal(
            v.p,
            UrlPart::Path,
            &v.value,
            "a value may not start the path with `//` (it would be read as a host)",
        ));
    }
    let mut s = start;
    for seg in path.split('/') {
        let e = s + seg.len();
        if (seg == "." || seg == "..")
            && let Some(v) = within(s, e)
        {
            return Err(refusal(
                v.p,
                UrlPart::Path,
                &v.value,
                "a value may not make a `.` or `..` path segment (it would name another path)",
            ));
        }
        s = e + 1;
    }
    Ok(())
}

/// Refuses a `sqlite:` URL whose file name, as sqlx reads it (the scheme trimmed, up to the
/// first `?`, percent-decoded), a placeholder value made empty, `:memory:` or a `file:` URI: each
/// names a database other than a file at that path (a fresh in-memory one, or a URI whose own
/// `?mode=` and `vfs=` would apply).
fn check_sqlite_file(out: &str, values: &[PathValue<'_>]) -> Result<(), UrlRefusal> {
    let Some(v) = values.first() else { return Ok(()) };
    let rest = out.get(7..).unwrap_or_default();
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or_default();
    let decoded = percent_decode(file).unwrap_or_else(|| file.to_owned());
    let uri = decoded.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:"));
    let why = if decoded.is_empty() {
        "a value may not leave the file name empty"
    } else if decoded == ":memory:" {
        "a value may not make the file name `:memory:` (a fresh, empty database)"
    } else if uri {
        "a value may not make the file name a `file:` URI (its own parameters would apply)"
    } else {
        return Ok(());
    };
    Err(refusal(v.p, UrlPart::Path, &v.value, why))
}

/// `s` with its `%XX` escapes decoded, or `None` when an escape is malformed or the result is
/// not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| char::from(c).to_digit(16);
            let hi = b.get(i + 1).copied().and_then(hex)?;
            let lo = b.get(i + 2).copied().and_then(hex)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query value decoded as sqlx (`application/x-www-form-urlencoded`) reads it: `+` is a space,
/// then `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
pub fn form_decode(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(raw: &str) -> Vec<(String, UrlPart)> {
        let t = UrlTemplate::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        t.components().into_iter().map(|(p, c)| (p.to_string(), c)).collect()
    }

    fn one(raw: &str) -> UrlPart {
        let c = comps(raw);
        assert_eq!(c.len(), 1, "{raw}: {c:?}");
        c[0].1
    }

    #[test]
    fn each_placeholder_gets_its_component() {
        use UrlPart as U;
        for (raw, want) in [
            ("postgres://{{target.attr.u}}@h/db", U::User),
            ("postgres://{{target.attr.u}}:${PW}@h/db", U::User),
            ("postgres://u:{{target.attr.p}}@h/db", U::Password),
            ("postgres://u:p@ss@{{target.attr.h}}/db", U::Host),
            ("postgres://{{target.attr.h}}:5432/db", U::Host),
            ("postgres://[::1]:{{target.attr.port}}/db", U::Port),
            ("postgres://h/{{target.attr.db}}", U::Path),
            ("postgres://h/db?a=1&options[search_path]={{target.attr.s}}", U::QueryValue),
            ("postgres://h/db?a=1#{{target.attr.f}}", U::Fragment),
            ("postgres:{{target.attr.p}}", U::Path),
            ("sqlite://{{needs.b.emit.url}}", U::Path),
            ("sqlite:{{needs.b.emit.url}}", U::Path),
            ("sqlite://${DIR}/{{target.attr.f}}.db#x", U::Path),
            ("sqlite:///x.db?mode={{target.attr.m}}", U::QueryValue),
            ("sqlite:///x.db?mode=ro#{{target.attr.m}}", U::QueryValue),
            ("sandbox://${SANDBOX}?scratch={{run.id}}", U::QueryValue),
            ("sandbox://{{target.attr.dir}}?store=x", U::Host),
        ] {
            assert_eq!(one(raw), want, "{raw}");
        }
        assert_eq!(
            comps("sandbox://${SANDBOX}?scratch={{run.id}}&store=tracker-{{target.attr.shard}}"),
            [("run.id".to_owned(), U::QueryValue), ("target.attr.shard".to_owned(), U::QueryValue)]
        );
    }

    #[test]
    fn a_placeholder_may_not_decide_the_scheme() {
        for raw in ["{{needs.pitr.url}}", "{{target.attr.s}}://h/db", "${BASE}{{target.attr.x}}"] {
            let e = UrlTemplate::parse(raw).unwrap_err();
            assert!(matches!(e, UrlTemplateError::Scheme(_)), "{raw}: {e}");
            assert!(e.to_string().contains("would decide the URL's scheme"), "{e}");
        }
        assert!(UrlTemplate::parse("${DATABASE_URL}").is_ok(), "the operator's own URL");
        // Nor a query parameter's name (`?host=` would move the connection).
        for raw in [
            "postgres://h/db?{{target.attr.k}}=1",
            "postgres://h/db?a=1&opt_{{target.attr.k}}=1",
            "postgres://h/db?{{target.attr.k}}",
            "sqlite:///x.db?{{target.attr.k}}=rwc",
        ] {
            let e = UrlTemplate::parse(raw).unwrap_err();
            assert!(matches!(e, UrlTemplateError::QueryKey(_)), "{raw}: {e}");
            let t = UrlTemplate::parse_with_templated_shape(raw).unwrap();
            assert_eq!(t.templated_shape().unwrap().to_string(), "target.attr.k");
        }
        assert!(matches!(UrlTemplate::parse("{{nope}}"), Err(UrlTemplateError::Syntax(_))));
    }

    #[test]
    fn literal_secrets_are_found() {
        for raw in [
            "postgres://u:s3cret@h/db",
            "postgres://u:x${PW}@h/db",
            "postgres://u:{{target.attr.pw}}@h/db",
            "postgres://h/db?sslmode=disable&PASSWORD=x",
            "postgres://h/db?pass%77ord=x",
            "mysql://h/db?pwd={{target.attr.pw}}",
        ] {
            let t = UrlTemplate::parse(raw).unwrap();
            assert!(t.literal_secret().is_some(), "{raw}");
        }
        for raw in [
            "postgres://u:${PW}@h/db",
            "postgres://u@h/db",
            "postgres://u:@h/db",
            "postgres://h/db?password=${PW}&sslpassword=",
            "sqlite:///tmp/a:b@c.db",
            "postgres://h/db?passwords=x",
        ] {
            let t = UrlTemplate::parse(raw).unwrap();
            assert_eq!(t.literal_secret(), None, "{raw}");
        }
        let t = UrlTemplate::parse("postgres://u:{{target.attr.pw}}@h/db").unwrap();
        assert!(t.literal_secret().unwrap().contains("comes from `{{target.attr.pw}}`"));
    }

    fn render(raw: &str, v: &str) -> Result<String, UrlRenderError<String>> {
        UrlTemplate::parse(raw).unwrap().render(|r| match r {
            Ref::Placeholder(_) => Ok(Fill::Value(v.to_owned())),
            Ref::Env(_) => Ok(Fill::Value("/srv/a b".to_owned())),
        })
    }

    #[test]
    fn values_are_encoded_for_their_component() {
        for (raw, v, want) in [
            (
                "postgres://h/{{target.attr.db}}",
                "live?options=-csearch_path%3Devil",
                "postgres://h/live%3Foptions%3D-csearch_path%253Devil",
            ),
            (
                "postgres://{{target.attr.u}}@h/db",
                "evil@127.0.0.1:5432",
                "postgres://evil%40127.0.0.1%3A5432@h/db",
            ),
            (
                "sqlite://{{needs.b.emit.url}}",
                "/tmp/x/pwn?mode=rwc",
                "sqlite:///tmp/x/pwn%3Fmode%3Drwc",
            ),
            ("sqlite://${DIR}/{{target.attr.f}}", "a b/é", "sqlite:///srv/a b/a%20b/%C3%A9"),
            (
                "postgres://h/db?x={{target.attr.v}}",
                "a+b&c=d#e",
                "postgres://h/db?x=a%2Bb%26c%3Dd%23e",
            ),
            (
                "postgres://{{target.attr.h}}:5432/db",
                "db-1.internal",
                "postgres://db-1.internal:5432/db",
            ),
            ("postgres://{{target.attr.h}}/db", "[::1]", "postgres://[::1]/db"),
            ("postgres://h:{{target.attr.p}}/db", "6543", "postgres://h:6543/db"),
        ] {
            assert_eq!(render(raw, v).unwrap(), want, "{raw} with {v:?}");
        }
    }

    #[test]
    fn hosts_ports_and_path_tricks_are_refused() {
        for (raw, v, part) in [
            (
                "postgres://postgres@{{target.attr.h}}/test",
                "127.0.0.1:5432/other?x=",
                UrlPart::Host,
            ),
            ("postgres://postgres@{{target.attr.h}}/test", "evil@127.0.0.1:5432", UrlPart::Host),
            ("postgres://{{target.attr.h}}/test", "", UrlPart::Host),
            ("postgres://{{target.attr.h}}/test", "[not-v6]", UrlPart::Host),
            ("postgres://h:{{target.attr.p}}/test", "0", UrlPart::Port),
            ("postgres://h:{{target.attr.p}}/test", "65536", UrlPart::Port),
            ("postgres://h:{{target.attr.p}}/test", "54 32", UrlPart::Port),
            ("postgres://h/{{target.attr.db}}", "..", UrlPart::Path),
            ("sqlite:///srv/{{target.attr.f}}/x.db", "a/../../etc", UrlPart::Path),
            ("sqlite:{{target.attr.p}}", "//x.db", UrlPart::Path),
            ("sqlite://{{target.attr.p}}", "file:/x.db?mode=rwc", UrlPart::Path),
            ("sqlite:{{target.attr.p}}", "FILE:x.db", UrlPart::Path),
            ("sqlite:{{target.attr.p}}.db", "file:x", UrlPart::Path),
            ("sqlite://{{target.attr.p}}", ":memory:", UrlPart::Path),
            ("sqlite:{{target.attr.p}}", "", UrlPart::Path),
            ("sqlite://{{target.attr.p}}?mode=ro", "", UrlPart::Path),
        ] {
            match render(raw, v) {
                Err(UrlRenderError::Refused(r)) => {
                    assert_eq!(r.part, part, "{raw} with {v:?}");
                    assert!(r.to_string().contains(&format!("{v:?}")), "{r}");
                }
                other => panic!("{raw} with {v:?}: {other:?}"),
            }
        }
        assert_eq!(
            render("sqlite:///srv/{{target.attr.f}}.db", "..").unwrap(),
            "sqlite:///srv/...db"
        );
        assert_eq!(render("sqlite://{{target.attr.f}}", "//x").unwrap(), "sqlite:////x");
        assert_eq!(
            render("sqlite:///srv/{{target.attr.f}}", "file:x").unwrap(),
            "sqlite:///srv/file%3Ax",
            "`file:` inside a path names a file"
        );
        assert_eq!(
            render("sqlite:///srv/{{target.attr.f}}x.db", "").unwrap(),
            "sqlite:///srv/x.db"
        );
        assert_eq!(
            render("postgres:{{target.attr.p}}", "//evil@host/db").unwrap(),
            "postgres:%2F%2Fevil%40host%2Fdb",
            "outside sqlite: a path value is one segment"
        );
        assert_eq!(
            render("postgres://h/{{target.attr.db}}", "a/..").unwrap(),
            "postgres://h/a%2F.."
        );
    }

    #[test]
    fn a_refused_password_is_not_shown() {
        let r = refusal(&Placeholder::RunId, UrlPart::Password, "s3cr@t", "why");
        assert!(!r.to_string().contains("s3cr"), "{r}");
        let r = refusal(&Placeholder::RunId, UrlPart::Host, "postgres://u:pw@h", "why");
        assert!(r.to_string().contains("u:***@h") && !r.to_string().contains("pw"), "{r}");
    }

    #[test]
    fn shown_text_and_env_values_are_spliced_as_they_are() {
        let t = UrlTemplate::parse("postgres://u:${PW}@h:{{target.attr.p}}/{{run.id}}").unwrap();
        let out: Result<String, UrlRenderError<()>> = t.render(|r| match r {
            Ref::Placeholder(Placeholder::RunId) => Ok(Fill::Shown("<run id>".into())),
            Ref::Placeholder(_) => Ok(Fill::Shown("<port>".into())),
            Ref::Env(_) => Ok(Fill::Value("s3cr@t".into())),
        });
        assert_eq!(out.unwrap(), "postgres://u:s3cr@t@h:<port>/<run id>");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(form_decode("a+b%2B").as_deref(), Some("a b+"));
        let all: String = (1u8..128).map(char::from).chain("é€😀".chars()).collect();
        assert_eq!(percent_decode(&percent_encode(&all, false)).as_deref(), Some(all.as_str()));
        assert_eq!(form_decode(&percent_encode(&all, true)).as_deref(), Some(all.as_str()));
    }
}
