//! The one error type of this crate: what went wrong, and where in which file.

use std::fmt;

/// Which class of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML (or not UTF-8).
    Syntax,
    /// A key that the config does not know, at the top level or in a section.
    UnknownKey,
    /// A value has the wrong TOML type, or cannot be read as the expected type
    /// (for example a negative size or a malformed socket address).
    Type,
    /// A value is well typed but not acceptable: out of range, not in its set of
    /// allowed values, or inconsistent with another key.
    Invalid,
}

/// An error from loading, parsing or validating a configuration.
///
/// Its `Display` form is `origin:line:column: key.path: message`, for example
/// `mailroom.toml:7:20: smtp.max_message_size: must be at least 1024 (got 0)`.
/// Parts that are not known (no line for an I/O error, no key for some syntax
/// errors) are left out.
#[derive(Debug)]
pub struct ConfigError {
    pub(crate) kind: ErrorKind,
    pub(crate) origin: String,
    pub(crate) line: Option<usize>,
    pub(crate) column: Option<usize>,
    pub(crate) key: Option<String>,
    pub(crate) message: String,
    pub(crate) source: Option<std::io::Error>,
}

impl ConfigError {
    /// Which class of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file name (or other origin) given to [`crate::Config::parse`] or
    /// [`crate::Config::load`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line of the offending text, when the error has a place in the file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column (in characters) of the offending text, when the error has a
    /// place in the file.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The dotted key path the error is about, such as `smtp.max_message_size`, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The description of the problem, without origin, position or key.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
