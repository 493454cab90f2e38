//! The one error type of the sandbox. Each variant says whether it is the caller's input that is
//! at fault (refused: exit code 2 in the binary) or the system that failed.

use std::path::{Path, PathBuf};

/// What went wrong, with the evidence: the file, line, store or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for something the sandbox refuses: an unknown store, a time outside the
    /// retention window, a missing directory, a malformed option. Nothing was written.
    #[error("{0}")]
    Refused(String),
    /// A backup file (journal segment, snapshot, ledger, manifest) does not hold what it must.
    #[error("{path}{}: {msg}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The 1-based line at fault, when known.
        line: Option<u64>,
        /// What is wrong with it.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A database server of a clusters sandbox, or a tool run on it, failed (the message quotes
    /// the tool's output or the server's log).
    #[error("{0}")]
    Server(String),
    /// A database statement failed.
    #[error("{context}: {source}")]
    Db {
        /// Which store and what was being done.
        context: String,
        /// The underlying error.
        source: sqlx::Error,
    },
}

impl Error {
    /// True when the caller's input is at fault (or a backup is damaged) rather than the system:
    /// the binary exits with code 2.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused(_) | Error::Corrupt { .. })
    }

    pub(crate) fn refused(msg: impl Into<String>) -> Self {
        Error::Refused(msg.into())
    }

    pub(crate) fn corrupt(path: &Path, line: Option<u64>, msg: impl Into<String>) -> Self {
        Error::Corrupt { path: path.to_owned(), line, msg: msg.into() }
    }
}

/// `Result` with the sandbox's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_owned(), source })
    }
}

/// Opens one of the sandbox's own files (a snapshot, the ledger): one that is missing is a
/// damaged sandbox (refused, exit 2), not a system failure.
pub(crate) fn open_own(path: &Path, what: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::corrupt(path, None, format!("{what} is missing: the sandbox is damaged"))
        } else {
            Error::Io { path: path.to_owned(), source }
        }
    })
}

/// A line of one of the sandbox's own files that could not be read: bytes that are not UTF-8
/// are the file's corruption (refused, with the line), anything else a system failure.
pub(crate) fn line_error(path: &Path, line: u64, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::InvalidData {
        Error::corrupt(path, Some(line), format!("unreadable line: {source}"))
    } else {
        Error::Io { path: path.to_owned(), source }
    }
}

/// Attaches a context to a database error.
pub(crate) trait DbContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Db { context: context(), source })
    }
}
