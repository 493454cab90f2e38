//! Secrets in text rewind prints or stores: the one redaction every crate uses.
//!
//! [`redact_url`] hides the password of a connection URL: the userinfo password, which runs to
//! the **last** `@` (drivers split userinfo there, so `postgres://u:s3cr@tPW@host/db` has the
//! password `s3cr@tPW`), and the values of `password=`, `pass=`, `pwd=` and `sslpassword=`
//! query parameters (keys compared without case, after percent-decoding). [`redact_text`]
//! applies it to every `scheme://` URL inside a message (a driver's or a resolver's error may
//! quote one) and to `password=`-style pairs outside URLs. [`is_secret_name`] says which
//! environment variables a dry run shows as `***`.
//!
//! When in doubt they hide more, never less: a URL that is not well formed (a password holding
//! `/`, `?` or `#`) is redacted up to its last `@` all the same.

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "***";

/// Query keys whose values are secrets (compared in lower case).
const SECRET_KEYS: &[&str] = &["password", "pass", "pwd", "sslpassword"];

/// `url` with its password replaced by `***` (see the module documentation). Text that is not
/// a URL comes back unchanged, apart from `password=`-style pairs.
pub fn redact_url(url: &str) -> String {
    let out = redact_userinfo(url, url.len());
    redact_pairs(&out, false)
}

/// `text` with the password of every `scheme://` URL in it, and the value of every
/// `password=`-style pair, replaced by `***`. A URL runs to the next whitespace, or, when its
/// userinfo has a password but no `@` before that whitespace (a password holding a space), to
/// the last `@` of the line.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") && !text.contains('=') && !text.contains('"') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let start = scheme_start(rest, sep);
        let Some(start) = start else {
            out.push_str(&rest[..sep + 3]);
            rest = &rest[sep + 3..];
            continue;
        };
        out.push_str(&rest[..start]);
        let url = &rest[start..];
        let after = sep - start + 3;
        let token_end = url[after..].find(char::is_whitespace).map_or(url.len(), |i| after + i);
        let line_end = url[after..].find('\n').map_or(url.len(), |i| after + i);
        // A password that holds a space: the URL runs on to the line's last `@`.
        let mut end = token_end;
        if password_start(&url[..token_end]).is_some()
            && !url[after..token_end].contains('@')
            && let Some(at) = url[token_end..line_end].rfind('@')
        {
            let at = token_end + at;
            end = url[at..].find(char::is_whitespace).map_or(url.len(), |i| at + i);
        }
        out.push_str(&redact_userinfo(&url[..end], end));
        rest = &url[end..];
    }
    out.push_str(rest);
    redact_json(&redact_pairs(&out, true))
}

/// The string values of JSON members named like secrets (`"password": "…"`, `"api_token":"…"`)
/// replaced. Strings are read pairwise from the first quote, escapes skipped over.
fn redact_json(s: &str) -> String {
    if !s.contains('"') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(q) = rest.find('"') {
        let body = &rest[q + 1..];
        let Some(close) = string_end(body) else { break };
        let key = &body[..close];
        let after = &body[close + 1..];
        out.push_str(&rest[..q + 1 + close + 1]);
        rest = after;
        let secret = !key.is_empty()
            && key.len() <= 64
            && !key.contains(char::is_whitespace)
            && (is_secret_key(key) || is_secret_name(key));
        if !secret {
            continue;
        }
        let Some(colon) = after.trim_start().strip_prefix(':') else { continue };
        let Some(value) = colon.trim_start().strip_prefix('"') else { continue };
        // Up to and including the value's opening quote, then the value hidden.
        out.push_str(&after[..after.len() - value.len()]);
        let end = match string_end(value) {
            Some(e) => {
                out.push_str(if e > 0 { REDACTED } else { "" });
                out.push('"');
                e + 1
            }
            // Cut short (a tail's end): what there is of it is hidden.
            None => {
                out.push_str(if value.is_empty() { "" } else { REDACTED });
                value.len()
            }
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Where the JSON string whose body starts `s` ends: its first quote not escaped by `\`.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (j, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(j),
            _ => {}
        }
    }
    None
}

/// Whether an environment variable named `name` holds a secret: its name contains `PASSWORD`,
/// `PASSWD`, `TOKEN`, `SECRET`, `CREDENTIAL`, `API_KEY` or `PRIVATE_KEY` (in any case), as
/// `PGPASSWORD`, `GITHUB_TOKEN` and `AWS_SECRET_ACCESS_KEY` do.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "TOKEN", "SECRET", "CREDENTIAL", "API_KEY", "PRIVATE_KEY"]
        .iter()
        .any(|w| upper.contains(w))
}

fn is_scheme_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')
}

/// Where the scheme ending at `sep` (the index of `://` in `s`) starts, if it is one: a letter,
/// then letters, digits, `+`, `-` or `.`.
fn scheme_start(s: &str, sep: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = sep;
    while i > 0 && is_scheme_char(b[i - 1]) {
        i -= 1;
    }
    // A scheme starts with a letter: skip leading digits and signs.
    while i < sep && !b[i].is_ascii_alphabetic() {
        i += 1;
    }
    (i < sep).then_some(i)
}

/// Where the userinfo password of `url` starts, if its authority has `user:`: the byte after
/// the first `:` that comes before any `/`, `?`, `#` or `@` after `://`.
fn password_start(url: &str) -> Option<usize> {
    let sep = url.find("://")?;
    let s = sep + 3;
    let user_end = url[s..].find([':', '/', '?', '#', '@']).map(|i| s + i)?;
    (url.as_bytes()[user_end] == b':').then_some(user_end + 1)
}

/// `url[..end]` with the userinfo password (up to the last `@` of `url[..end]`) replaced.
fn redact_userinfo(url: &str, end: usize) -> String {
    let url = &url[..end];
    let Some(p) = password_start(url) else { return url.to_owned() };
    match url[p..].rfind('@') {
        Some(at) if url[p..p + at] != *REDACTED => {
            format!("{}{REDACTED}{}", &url[..p], &url[p + at..])
        }
        _ => url.to_owned(),
    }
}

/// The values of `password=`-style pairs replaced: a key starts the text or follows `?`, `&`,
/// `;` (or whitespace, in `text` mode) and ends at `=`; its value runs to the next `&` (or
/// whitespace, in `text` mode). In `text` mode a key may also be an option (`--password=`) or a
/// variable named like a secret (`PGPASSWORD=`, `API_TOKEN=`, see [`is_secret_name`]), and a
/// quoted value runs to its closing quote.
fn redact_pairs(s: &str, text: bool) -> String {
    let is_boundary = |c: char| matches!(c, '?' | '&' | ';') || (text && c.is_whitespace());
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while i < s.len() {
        let at_key = prev.is_none_or(is_boundary);
        if at_key && let Some(eq) = key_end(&s[i..]) {
            let key = &s[i..i + eq];
            let option = key.trim_start_matches('-');
            if is_secret_key(key) || (text && (is_secret_key(option) || is_secret_name(option))) {
                let v = i + eq + 1;
                let quote = s[v..].chars().next().filter(|c| text && matches!(c, '"' | '\''));
                let value_end = match quote {
                    Some(q) => s[v + 1..].find(q).map_or(s.len(), |j| v + 1 + j + 1),
                    None => s[v..]
                        .find(|c: char| c == '&' || (text && c.is_whitespace()))
                        .map_or(s.len(), |j| v + j),
                };
                out.push_str(&s[i..v]);
                if value_end > v {
                    out.push_str(REDACTED);
                }
                i = value_end;
                prev = Some('=');
                continue;
            }
        }
        let Some(c) = s[i..].chars().next() else { break };
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// The length of a query key at the start of `s`, when `=` follows it.
fn key_end(s: &str) -> Option<usize> {
    let end =
        s.find(|c: char| matches!(c, '=' | '&' | '?' | ';' | '/' | '#') || c.is_whitespace())?;
    (s.as_bytes()[end] == b'=' && end > 0 && end <= 64).then_some(end)
}

fn is_secret_key(key: &str) -> bool {
    let decoded = crate::template::percent_decode(key).unwrap_or_else(|| key.to_owned());
    let lower = decoded.to_ascii_lowercase();
    SECRET_KEYS.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_run_to_the_last_at() {
        for (url, want) in [
            ("postgres://u:s3cr@tPW@host/db", "postgres://u:***@host/db"),
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://postgres@h/db", "postgres://postgres@h/db"),
            ("postgres://h:5432/db", "postgres://h:5432/db"),
            ("sqlite:///tmp/a:b/x.db", "sqlite:///tmp/a:b/x.db"),
            ("sqlite://x.db", "sqlite://x.db"),
            // Not well formed, hidden all the same.
            ("postgres://u:pa/ss?x#y@host/db", "postgres://u:***@host/db"),
            ("postgres://u:***@h/db", "postgres://u:***@h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn password_query_values_are_hidden() {
        for (url, want) in [
            (
                "postgres://h/db?password=x&sslmode=disable",
                "postgres://h/db?password=***&sslmode=disable",
            ),
            (
                "postgres://h/db?sslmode=disable&PassWord=x@y",
                "postgres://h/db?sslmode=disable&PassWord=***",
            ),
            (
                "mysql://h/db?pwd=a&pass=b&sslpassword=c",
                "mysql://h/db?pwd=***&pass=***&sslpassword=***",
            ),
            ("postgres://h/db?pass%77ord=x", "postgres://h/db?pass%77ord=***"),
            (
                "postgres://h/db?passwords=x&user=password",
                "postgres://h/db?passwords=x&user=password",
            ),
            ("postgres://h/db?password=", "postgres://h/db?password="),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn every_url_in_a_message_is_redacted() {
        assert_eq!(
            redact_text(
                "cannot connect to postgres://u:s3cr@tPW@h/db: refused; see `sqlite://x` and mysql://r:pw@m/d."
            ),
            "cannot connect to postgres://u:***@h/db: refused; see `sqlite://x` and mysql://r:***@m/d."
        );
        assert_eq!(
            redact_text("connection `x` (postgres://u:pa ss@h/db): refused\nnext line a@b"),
            "connection `x` (postgres://u:***@h/db): refused\nnext line a@b"
        );
        assert_eq!(redact_text("host=h password=hunter2 user=u"), "host=h password=*** user=u");
        assert_eq!(redact_text("no secrets here: a://b, c=d"), "no secrets here: a://b, c=d");
        for (text, want) in [
            ("export PGPASSWORD=hunter2; psql", "export PGPASSWORD=*** psql"),
            ("tool --password=hunter2 --user u", "tool --password=*** --user u"),
            ("API_TOKEN=abc GITHUB_TOKEN='a b' x", "API_TOKEN=*** GITHUB_TOKEN=*** x"),
            ("db_password=\"a b\" next", "db_password=*** next"),
            (
                r#"{"user":"u","password": "hu\"nt","api_token":"t","n":1}"#,
                r#"{"user":"u","password": "***","api_token":"***","n":1}"#,
            ),
            (r#"{"password":""}"#, r#"{"password":""}"#),
            (r#"say "password" then "x""#, r#"say "password" then "x""#),
            (r#"{"a":"b"} "secret":"#, r#"{"a":"b"} "secret":"#),
            (r#"{"password":"cut sh"#, r#"{"password":"***"#),
            ("tokens are fine: none=1", "tokens are fine: none=1"),
        ] {
            assert_eq!(redact_text(text), want, "{text}");
        }
        assert_eq!(redact_text("://x 9://y"), "://x 9://y");
    }

    #[test]
    fn secret_names() {
        for n in
            ["PGPASSWORD", "db_password", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY"]
        {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PGUSER", "HOME", "PWD", "REWIND_STEP", "KEYBOARD"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
