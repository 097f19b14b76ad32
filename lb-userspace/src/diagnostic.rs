//! One problem found in the configuration, printed on one line:
//! `file:line: Kind ns/name: spec.path.to.field: message` (objects read from the
//! Kubernetes API have no file: `Kind ns/name: spec.path: message`).

use std::fmt;
use std::path::PathBuf;

/// Whether a problem rejects the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Where a problem is: the file and line, and the resource when one is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    /// `Kind ns/name`, empty when the document could not be read as a resource.
    pub resource: String,
}

/// One line of `lb validate` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    /// Field path inside the resource (`spec.http[0].route[1].weight`), may be empty.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(origin: Origin, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            origin,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn warning(origin: Origin, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(origin, path, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.origin.file.as_os_str().is_empty() {
            write!(f, "{}:{}: ", self.origin.file.display(), self.origin.line)?;
        }
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        if !self.origin.resource.is_empty() {
            write!(f, "{}: ", self.origin.resource)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Errors first, then warnings, each in file and line order.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.severity, &a.origin.file, a.origin.line, &a.path).cmp(&(
            b.severity,
            &b.origin.file,
            b.origin.line,
            &b.path,
        ))
    });
}
