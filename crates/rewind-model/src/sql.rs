//! Just enough SQL lexing to tell how many statements a text holds, and what it starts with.
//!
//! A read-only query (a `[preflight]`, and every statement `plan` or `--dry-run` sends) is one
//! statement: [`single_statement`] finds a `;` outside string literals, quoted identifiers,
//! dollar-quoted strings and comments, and allows one trailing `;` followed only by whitespace
//! and comments. The rules are each engine's ([`Dialect`]):
//!
//! - every dialect: `'…'` with `''` for a quote; `--` comments to the end of the line; `/* */`;
//! - PostgreSQL: `E'…'` strings also take backslash escapes; `"…"` identifiers (`""`);
//!   `$tag$…$tag$` strings; `/* */` nests;
//! - SQLite: `"…"`, `` `…` `` and `[…]` identifiers;
//! - MySQL/MariaDB: `'…'` and `"…"` take backslash escapes; `` `…` `` identifiers; `#`
//!   comments; `--` starts a comment only before a space or a control character; `/*! … */`
//!   (and MariaDB's `/*M! … */`) hold code the server runs, so their text is lexed as code.
//!
//! When the engine is not known (a connection URL that is a variable or a `sandbox://` name), a
//! text must be one statement under every dialect ([`Dialect::ALL`]), so no reading of it hides a
//! second statement.
//!
//! Pure: no I/O. Offsets are byte offsets into the text.

use std::fmt;

/// Whose lexical rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL (with `standard_conforming_strings` on, the default since 9.1).
    Postgres,
    /// SQLite.
    Sqlite,
    /// MySQL and MariaDB (without `ANSI_QUOTES` or `NO_BACKSLASH_ESCAPES`).
    Mysql,
}

impl Dialect {
    /// Every dialect, for a text whose engine is not known.
    pub const ALL: [Self; 3] = [Self::Postgres, Self::Sqlite, Self::Mysql];

    /// The dialect a connection URL's scheme names: `None` when the URL does not start with a
    /// known scheme (`${DB_URL}`, `sandbox://…`).
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "sqlite" => Some(Self::Sqlite),
            "mysql" | "mariadb" => Some(Self::Mysql),
            _ => None,
        }
    }

    /// `PostgreSQL`, `SQLite`, `MySQL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Sqlite => "SQLite",
            Self::Mysql => "MySQL",
        }
    }
}

/// What a lexed piece of text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Whitespace.
    Space,
    /// A comment (`-- …`, `/* … */`, `# …`).
    Comment,
    /// A string literal, a quoted identifier or a dollar-quoted string.
    Quoted,
    /// A keyword, an identifier or a number.
    Word,
    /// `;` outside every literal and comment.
    Semicolon,
    /// Any other character (operators, parentheses, parameters).
    Other,
}

/// A piece of text: its kind and byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// Why a text is not one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlTextError {
    /// Nothing but whitespace and comments before the end or the first `;`.
    Empty {
        /// Where the empty statement ends.
        at: usize,
    },
    /// A second statement follows the first one's `;`.
    Multiple {
        /// The `;` that ends the first statement.
        semicolon: usize,
        /// Where the second statement starts.
        at: usize,
        /// The start of the second statement, shortened, for messages.
        next: String,
        /// The dialect that reads it so.
        dialect: Dialect,
    },
    /// A literal, quoted identifier or comment that never ends.
    Unterminated {
        /// What (`string literal`, `quoted identifier`, `dollar-quoted string`, `comment`).
        what: &'static str,
        /// Where it starts.
        at: usize,
        /// The dialect that reads it so.
        dialect: Dialect,
    },
}

impl SqlTextError {
    /// The byte offset in the text the error points at.
    pub fn offset(&self) -> usize {
        match self {
            Self::Empty { at } | Self::Multiple { at, .. } | Self::Unterminated { at, .. } => *at,
        }
    }
}

impl fmt::Display for SqlTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { .. } => f.write_str("it holds no statement"),
            Self::Multiple { next, .. } => write!(
                f,
                "it holds more than one statement: `{next}` follows the first statement's `;` \
                 (one statement per query; only a trailing `;` is allowed)"
            ),
            Self::Unterminated { what, dialect, .. } => {
                write!(f, "a {what} never ends (read as {} SQL)", dialect.name())
            }
        }
    }
}

/// The text `shorten` keeps of a statement for messages.
const SHORT: usize = 60;

/// `text` on one line, whitespace collapsed, cut after about [`SHORT`] characters with `…`.
pub fn shorten(text: &str) -> String {
    let one_line: Vec<&str> = text.split_whitespace().collect();
    let one_line = one_line.join(" ");
    match one_line.char_indices().nth(SHORT) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// Splits `sql` into tokens under `dialect`. Fails on a literal, quoted identifier or comment
/// that never ends.
pub fn tokens(sql: &str, dialect: Dialect) -> Result<Vec<Token>, SqlTextError> {
    Lexer { b: sql.as_bytes(), i: 0, dialect, exec_comments: 0, out: Vec::new() }.run()
}

/// Checks that `sql` is exactly one statement under `dialect` (every dialect when `None`): a
/// `;` outside literals and comments may only end the text, followed by nothing but whitespace
/// and comments.
pub fn single_statement(sql: &str, dialect: Option<Dialect>) -> Result<(), SqlTextError> {
    match dialect {
        Some(d) => single_under(sql, d),
        None => {
            // Refuse if any reading finds a second statement; an unterminated literal under one
            // reading (a backslash before a quote) is only an error if every reading says so.
            let mut unterminated = None;
            let mut fine = false;
            for d in Dialect::ALL {
                match single_under(sql, d) {
                    Ok(()) => fine = true,
                    Err(e @ SqlTextError::Unterminated { .. }) => {
                        unterminated.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match unterminated {
                Some(e) if !fine => Err(e),
                _ => Ok(()),
            }
        }
    }
}

fn single_under(sql: &str, dialect: Dialect) -> Result<(), SqlTextError> {
    let mut code = false;
    let mut semicolon = None;
    for t in tokens(sql, dialect)? {
        match (t.kind, semicolon) {
            (TokenKind::Space | TokenKind::Comment, _) => {}
            (TokenKind::Semicolon, None) if !code => {
                return Err(SqlTextError::Empty { at: t.start });
            }
            (TokenKind::Semicolon, None) => semicolon = Some(t.start),
            (_, Some(semicolon)) => {
                return Err(SqlTextError::Multiple {
                    semicolon,
                    at: t.start,
                    next: shorten(&sql[t.start..]),
                    dialect,
                });
            }
            (_, None) => code = true,
        }
    }
    if code { Ok(()) } else { Err(SqlTextError::Empty { at: sql.len() }) }
}

/// The first word of `sql` outside comments and opening parentheses, as written (`SELECT`,
/// `with`); `None` when there is none or the text does not lex.
pub fn first_keyword(sql: &str, dialect: Dialect) -> Option<&str> {
    let toks = tokens(sql, dialect).ok()?;
    for t in toks {
        match t.kind {
            TokenKind::Space | TokenKind::Comment => {}
            TokenKind::Other if &sql[t.start..t.end] == "(" => {}
            TokenKind::Word => return Some(&sql[t.start..t.end]),
            _ => return None,
        }
    }
    None
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    dialect: Dialect,
    /// Open MySQL `/*! … */` comments, whose text is code.
    exec_comments: usize,
    out: Vec<Token>,
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn is_word(c: u8) -> bool {
    is_word_start(c) || c == b'$'
}

impl Lexer<'_> {
    fn at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    fn push(&mut self, kind: TokenKind, start: usize) {
        self.out.push(Token { kind, start, end: self.i });
    }

    fn unterminated(&self, what: &'static str, at: usize) -> SqlTextError {
        SqlTextError::Unterminated { what, at, dialect: self.dialect }
    }

    fn run(mut self) -> Result<Vec<Token>, SqlTextError> {
        use Dialect::{Mysql, Postgres, Sqlite};
        while let Some(c) = self.at(0) {
            let start = self.i;
            let d = self.dialect;
            match c {
                c if c.is_ascii_whitespace() => {
                    while self.at(0).is_some_and(|c| c.is_ascii_whitespace()) {
                        self.i += 1;
                    }
                    self.push(TokenKind::Space, start);
                }
                b'-' if self.at(1) == Some(b'-')
                    && (d != Mysql || self.at(2).is_none_or(|c| c <= b' ')) =>
                {
                    self.line_comment();
                    self.push(TokenKind::Comment, start);
                }
                b'#' if d == Mysql => {
                    self.line_comment();
                    self.push(TokenKind::Comment, start);
                }
                b'/' if self.at(1) == Some(b'*') => {
                    if d == Mysql && (self.at(2) == Some(b'!') || self.starts_with(b"/*M!")) {
                        // Executable comment: the server runs its text; lex it as code.
                        self.i += if self.at(2) == Some(b'!') { 3 } else { 4 };
                        while self.at(0).is_some_and(|c| c.is_ascii_digit()) {
                            self.i += 1;
                        }
                        self.exec_comments += 1;
                        self.push(TokenKind::Space, start);
                    } else {
                        self.block_comment(start)?;
                        self.push(TokenKind::Comment, start);
                    }
                }
                b'*' if self.exec_comments > 0 && self.at(1) == Some(b'/') => {
                    self.i += 2;
                    self.exec_comments -= 1;
                    self.push(TokenKind::Space, start);
                }
                b'\'' => {
                    let backslash = d == Mysql || (d == Postgres && self.e_prefix(start));
                    self.quoted(b'\'', backslash, "string literal")?;
                    self.push(TokenKind::Quoted, start);
                }
                b'"' => {
                    let what = if d == Mysql { "string literal" } else { "quoted identifier" };
                    self.quoted(b'"', d == Mysql, what)?;
                    self.push(TokenKind::Quoted, start);
                }
                b'`' if d != Postgres => {
                    self.quoted(b'`', false, "quoted identifier")?;
                    self.push(TokenKind::Quoted, start);
                }
                b'[' if d == Sqlite => {
                    match self.b[start + 1..].iter().position(|&c| c == b']') {
                        Some(n) => self.i = start + 1 + n + 1,
                        None => return Err(self.unterminated("quoted identifier", start)),
                    }
                    self.push(TokenKind::Quoted, start);
                }
                b'$' if d == Postgres && self.dollar_tag().is_some() => {
                    self.dollar_quoted(start)?;
                    self.push(TokenKind::Quoted, start);
                }
                b'$' | b'@' | b':' | b'#' if d == Sqlite => {
                    self.sqlite_variable(start)?;
                    self.push(TokenKind::Word, start);
                }
                b';' => {
                    self.i += 1;
                    self.push(TokenKind::Semicolon, start);
                }
                c if is_word_start(c) => {
                    while self.at(0).is_some_and(is_word) {
                        self.i += 1;
                    }
                    self.push(TokenKind::Word, start);
                }
                _ => {
                    self.i += 1;
                    self.push(TokenKind::Other, start);
                }
            }
        }
        Ok(self.out)
    }

    /// A SQLite parameter, `$name`, `@name`, `:name` or `#name`, read as SQLite's tokenizer
    /// reads it (tokenize.c, `CC_DOLLAR`/`CC_VARALPHA`): name characters and `::` pairs, then
    /// optionally a `(` group that runs to the first `)` or white space, *whatever* it holds:
    /// `$1(') ; DELETE …` is one token to SQLite, so it must be one here too. A group that white
    /// space ends before its `)` is an illegal token to SQLite; it is refused here.
    fn sqlite_variable(&mut self, start: usize) -> Result<(), SqlTextError> {
        self.i += 1;
        let mut n = 0;
        while let Some(c) = self.at(0) {
            if is_word(c) {
                n += 1;
                self.i += 1;
            } else if c == b'(' && n > 0 {
                self.i += 1;
                while self.at(0).is_some_and(|c| !c.is_ascii_whitespace() && c != b')') {
                    self.i += 1;
                }
                if self.at(0) != Some(b')') {
                    return Err(self.unterminated("parameter group `$name(…)`", start));
                }
                self.i += 1;
                break;
            } else if c == b':' && self.at(1) == Some(b':') {
                self.i += 2;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.b[self.i..].starts_with(s)
    }

    /// Whether the quote at `quote` follows a lone `E`/`e` word (a PostgreSQL escape string).
    fn e_prefix(&self, quote: usize) -> bool {
        matches!(self.out.last(), Some(t) if t.kind == TokenKind::Word && t.end == quote
            && t.end - t.start == 1 && self.b[t.start].eq_ignore_ascii_case(&b'e'))
    }

    fn line_comment(&mut self) {
        while self.at(0).is_some_and(|c| c != b'\n') {
            self.i += 1;
        }
    }

    /// `/* … */` from `start`; nested on PostgreSQL.
    fn block_comment(&mut self, start: usize) -> Result<(), SqlTextError> {
        let nests = self.dialect == Dialect::Postgres;
        let mut depth = 0usize;
        while self.i < self.b.len() {
            if self.starts_with(b"/*") && (depth == 0 || nests) {
                depth += 1;
                self.i += 2;
            } else if self.starts_with(b"*/") {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    return Ok(());
                }
            } else {
                self.i += 1;
            }
        }
        Err(self.unterminated("comment", start))
    }

    /// A literal or identifier quoted by `q` from the current position: a doubled `q` stands for
    /// one, and with `backslash` a `\` escapes the next character.
    fn quoted(&mut self, q: u8, backslash: bool, what: &'static str) -> Result<(), SqlTextError> {
        let start = self.i;
        self.i += 1;
        while let Some(c) = self.at(0) {
            // An escaped character, or a doubled quote standing for one.
            if (backslash && c == b'\\') || (c == q && self.at(1) == Some(q)) {
                self.i += 2;
            } else if c == q {
                self.i += 1;
                return Ok(());
            } else {
                self.i += 1;
            }
        }
        self.i = self.b.len();
        Err(self.unterminated(what, start))
    }

    /// The length of a `$tag$` opener at the current position (`$$` or `$name$`), if it is one.
    fn dollar_tag(&self) -> Option<usize> {
        let rest = &self.b[self.i + 1..];
        match rest.first() {
            Some(b'$') => Some(2),
            Some(&c) if is_word_start(c) && !c.is_ascii_digit() => {
                let n = rest.iter().position(|&c| !(is_word_start(c)))?;
                (rest[n] == b'$').then_some(n + 2)
            }
            _ => None,
        }
    }

    fn dollar_quoted(&mut self, start: usize) -> Result<(), SqlTextError> {
        let Some(n) = self.dollar_tag() else { return Ok(()) };
        let tag = &self.b[start..start + n];
        let body = start + n;
        match self.b[body..].windows(n).position(|w| w == tag) {
            Some(p) => {
                self.i = body + p + n;
                Ok(())
            }
            None => {
                self.i = self.b.len();
                Err(self.unterminated("dollar-quoted string", start))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic in a test is a failed test
mod tests {
    use super::Dialect::{Mysql, Postgres, Sqlite};
    use super::*;

    fn one(sql: &str, d: Dialect) -> bool {
        single_statement(sql, Some(d)).is_ok()
    }

    fn second(sql: &str, d: Option<Dialect>) -> String {
        match single_statement(sql, d) {
            Err(SqlTextError::Multiple { at, .. }) => sql[at..].to_owned(),
            other => panic!("{sql:?} under {d:?}: expected two statements, got {other:?}"),
        }
    }

    #[test]
    fn two_statements_are_found_in_every_dialect() {
        let sql = "SELECT 'site' AS kind, 'deleted' AS state; DELETE FROM sites";
        for d in Dialect::ALL {
            assert_eq!(second(sql, Some(d)), "DELETE FROM sites");
        }
        assert_eq!(second(sql, None), "DELETE FROM sites");
        assert_eq!(second("SELECT 1;SELECT 2;", Some(Postgres)), "SELECT 2;");
        assert_eq!(second("SELECT 1;;", Some(Sqlite)), ";", "an empty statement is a second one");
        let e = single_statement(sql, None).unwrap_err();
        assert_eq!(e.offset(), sql.find("DELETE").unwrap());
        assert!(e.to_string().contains("`DELETE FROM sites` follows the first statement's `;`"));
    }

    #[test]
    fn one_trailing_semicolon_and_comments_after_it_are_fine() {
        for d in Dialect::ALL {
            for sql in [
                "SELECT 1",
                "SELECT 1;",
                "SELECT 1 ;  \n\t",
                "SELECT 1; -- done\n",
                "SELECT 1; /* done; really */",
                "  -- a leading comment; still one\nSELECT 1",
            ] {
                assert!(one(sql, d), "{sql:?} under {d:?}");
            }
        }
        assert!(one("SELECT 1; # mysql comment; x", Mysql));
        assert_eq!(
            second("SELECT 1; # not a comment here", Some(Postgres)),
            "# not a comment here"
        );
    }

    #[test]
    fn semicolons_inside_strings_and_identifiers_are_not_separators() {
        for d in Dialect::ALL {
            for sql in [
                "SELECT 'a;b' AS x",
                "SELECT 'it''s; fine' AS x",
                "SELECT ';' AS x;",
                "SELECT x FROM t WHERE y = '' AND z = ';'",
            ] {
                assert!(one(sql, d), "{sql:?} under {d:?}");
            }
        }
        // Quoted identifiers; a doubled quote stays inside.
        assert!(one(r#"SELECT "a;""b" FROM t"#, Postgres));
        assert!(one(r#"SELECT "a;""b" FROM t"#, Sqlite));
        assert!(one("SELECT `a;``b` FROM t", Mysql));
        assert!(one("SELECT `a;b` FROM t", Sqlite));
        assert!(one("SELECT [a;b] FROM t", Sqlite));
        // In PostgreSQL a backtick quotes nothing, and `[` is a subscript.
        assert_eq!(second("SELECT `a;b` FROM t", Some(Postgres)), "b` FROM t");
        assert_eq!(second("SELECT a[1];b", Some(Postgres)), "b");
    }

    #[test]
    fn backslashes_escape_only_where_the_engine_says_so() {
        // PostgreSQL standard strings: a backslash is a character, the quote ends the string.
        let sql = r"SELECT 'a\'; DELETE FROM t; --'";
        assert_eq!(second(sql, Some(Postgres)), "DELETE FROM t; --'");
        assert_eq!(second(sql, Some(Sqlite)), "DELETE FROM t; --'");
        // MySQL reads the same text as one string.
        assert!(one(sql, Mysql));
        // Unknown engine: every reading counts, so the text is refused.
        assert_eq!(second(sql, None), "DELETE FROM t; --'");
        // PostgreSQL E'' strings take backslash escapes.
        assert!(one(r"SELECT E'a\'; b' AS x", Postgres));
        assert!(one(r"SELECT e'a\\' AS x;", Postgres));
        assert_eq!(second(r"SELECT E'a\\'; b", Some(Postgres)), "b");
        // A word ending in e is not an E prefix (and is not valid SQL anyway).
        assert_eq!(second(r"SELECT name'a\'; b", Some(Postgres)), "b");
        // MySQL double-quoted strings.
        assert!(one(r#"SELECT "a\"; b" AS x"#, Mysql));
    }

    #[test]
    fn dollar_quotes_hold_anything_until_their_tag() {
        assert!(one("SELECT $$a; b$$ AS x", Postgres));
        assert!(one("SELECT $fn$ a; $$ nested-looking; $fn$ AS x;", Postgres));
        assert_eq!(second("SELECT $a$x$a$; SELECT 2", Some(Postgres)), "SELECT 2");
        // `$1` is a parameter, not a tag; identifiers may hold `$`.
        assert_eq!(second("SELECT $1; DROP TABLE t", Some(Postgres)), "DROP TABLE t");
        assert_eq!(second("SELECT a$b$; c$", Some(Postgres)), "c$");
        // Not a dollar quote outside PostgreSQL.
        assert_eq!(second("SELECT $$a; b$$", Some(Sqlite)), "b$$");
        assert!(matches!(
            single_statement("SELECT $x$ never ends", Some(Postgres)),
            Err(SqlTextError::Unterminated { what: "dollar-quoted string", at: 7, .. })
        ));
    }

    /// A SQLite parameter's `(…)` group swallows quotes and semicolons, as SQLite's own tokenizer
    /// does: a quote inside it opens no string (issue 11 review: this text passed as one
    /// statement, and SQLite ran five, one of them `VACUUM INTO`).
    #[test]
    fn sqlite_parameters_are_lexed_as_sqlite_lexes_them() {
        let smuggled = "SELECT kind, state FROM t WHERE id = $1(') ; COMMIT ; PRAGMA query_only = OFF ; VACUUM INTO '/tmp/x.db' ; SELECT 1 --'";
        assert!(!one(smuggled, Dialect::Sqlite));
        assert!(single_statement(smuggled, None).is_err(), "refused when the dialect is unknown");
        for p in ["$1", "@name", ":name", "#x", "$a::b", "$x(y)"] {
            assert!(one(&format!("SELECT {p}; "), Dialect::Sqlite), "{p}");
        }
        // A group that white space ends is an illegal token to SQLite, and refused here.
        assert!(matches!(
            single_statement("SELECT $x(a b'; DELETE FROM t; SELECT 'c)", Some(Dialect::Sqlite)),
            Err(SqlTextError::Unterminated { .. })
        ));
        assert!(one("SELECT ':not;a;param' , :p", Dialect::Sqlite));
    }

    #[test]
    fn comments_hide_semicolons() {
        for d in Dialect::ALL {
            assert!(one("SELECT 1 -- a; b\n", d), "{d:?}");
            assert!(one("SELECT /* a; b */ 1", d), "{d:?}");
            assert!(one("SELECT 1 -- a; b", d), "{d:?}: a line comment may end the text");
        }
        // PostgreSQL nests block comments; the others end at the first `*/`.
        assert!(one("SELECT /* a /* b; */ c; */ 1", Postgres));
        assert_eq!(second("SELECT /* a /* b */ c; */ 1", Some(Sqlite)), "*/ 1");
        // MySQL needs a space after `--`: `1 --1` is 1 minus minus 1.
        assert_eq!(second("SELECT 1 --1; DELETE FROM t", Some(Mysql)), "DELETE FROM t");
        assert!(one("SELECT 1 --1; DELETE FROM t", Sqlite));
        // MySQL runs the text of /*! */ comments.
        assert_eq!(second("SELECT 1 /*!50000 ; DELETE FROM t */", Some(Mysql)), "DELETE FROM t */");
        assert_eq!(
            second("SELECT 1 /*M!100000 ; DELETE FROM t */", Some(Mysql)),
            "DELETE FROM t */"
        );
        assert!(one("SELECT 1 /*!50000 , 2 */ FROM t", Mysql));
        assert!(one("SELECT 1 /*! ; DELETE FROM t */", Sqlite), "a comment elsewhere");
    }

    #[test]
    fn empty_and_unterminated_texts_are_errors() {
        for sql in ["", "  ", "-- only a comment", ";", "; SELECT 1"] {
            assert!(
                matches!(single_statement(sql, Some(Sqlite)), Err(SqlTextError::Empty { .. })),
                "{sql:?}"
            );
        }
        for (sql, what) in [
            ("SELECT 'abc", "string literal"),
            (r#"SELECT "abc"#, "quoted identifier"),
            ("SELECT 1 /* abc", "comment"),
            ("SELECT [abc", "quoted identifier"),
        ] {
            match single_statement(sql, Some(Sqlite)) {
                Err(e @ SqlTextError::Unterminated { what: w, at: 7..=9, .. }) if w == what => {
                    assert!(e.to_string().contains(what), "{e}");
                }
                other => panic!("{sql:?}: {other:?}"),
            }
        }
        // Under every dialect, unterminated only in some readings is not an error...
        assert!(single_statement(r"SELECT 'C:\' AS path", None).is_ok());
        // ...but unterminated in all of them is.
        assert!(matches!(
            single_statement("SELECT 'abc", None),
            Err(SqlTextError::Unterminated { .. })
        ));
    }

    #[test]
    fn the_first_keyword_skips_comments_and_parentheses() {
        assert_eq!(first_keyword("  select 1", Sqlite), Some("select"));
        assert_eq!(
            first_keyword("/* tag; */ -- x\n(SELECT 1) UNION (SELECT 2)", Postgres),
            Some("SELECT")
        );
        assert_eq!(first_keyword("WITH d AS (DELETE FROM t) SELECT 1", Postgres), Some("WITH"));
        assert_eq!(first_keyword("'x'", Postgres), None);
        assert_eq!(first_keyword("", Postgres), None);
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(Dialect::of_url("postgres://u@h/db"), Some(Postgres));
        assert_eq!(Dialect::of_url("postgresql://u@h/db"), Some(Postgres));
        assert_eq!(Dialect::of_url("sqlite://${DIR}/x.db"), Some(Sqlite));
        assert_eq!(Dialect::of_url("sqlite:x.db"), Some(Sqlite));
        assert_eq!(Dialect::of_url("mysql://h/db"), Some(Mysql));
        assert_eq!(Dialect::of_url("mariadb://h/db"), Some(Mysql));
        assert_eq!(Dialect::of_url("${CATALOG_URL}"), None);
        assert_eq!(Dialect::of_url("sandbox://dir?store=x"), None);
    }

    #[test]
    fn messages_shorten_long_text() {
        assert_eq!(shorten("SELECT  a,\n   b FROM t"), "SELECT a, b FROM t");
        let long = format!("SELECT {}", "x, ".repeat(40));
        let s = shorten(&long);
        assert!(s.ends_with('…') && s.chars().count() == SHORT + 1, "{s}");
    }
}
