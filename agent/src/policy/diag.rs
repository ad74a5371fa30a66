//! Diagnostics: what is wrong with the policy input, and where (`file:line:col: message`).

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a source file, 1-based. Line 0 means "the file as a whole".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

/// Where a value was read: the file and the position in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Origin {
    pub file: PathBuf,
    pub pos: Pos,
}

impl Origin {
    pub fn new(file: &Path, pos: Pos) -> Origin {
        Origin {
            file: file.to_owned(),
            pos,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(
                f,
                "{}:{}:{}",
                self.file.display(),
                self.pos.line,
                self.pos.col.max(1)
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The input is rejected as a whole.
    Error,
    /// Reported, then ignored (an unknown kind, for instance).
    Warning,
}

/// One finding about the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub origin: Origin,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(origin: Origin, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            origin,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(origin: Origin, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            origin,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}: {}", self.origin, self.message),
            Severity::Warning => write!(f, "{}: warning: {}", self.origin, self.message),
        }
    }
}

/// Whether any of `diags` is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}
