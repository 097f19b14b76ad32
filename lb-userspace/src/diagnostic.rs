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

/// What is wrong, as the step that found it says: the document's form (load) or its
/// meaning (model).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Load(#[from] crate::load::Invalid),
    #[error(transparent)]
    Model(#[from] crate::model::Invalid),
}

impl Problem {
    /// A short name for the problem (the reason of a Kubernetes Event).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Load(_) => "InvalidSchema",
            Problem::Model(m) => m.reason(),
        }
    }
}

/// One line of `lb validate` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    /// Field path inside the resource (`spec.http[0].route[1].weight`), may be empty.
    pub path: String,
    pub problem: Problem,
}

impl Diagnostic {
    pub fn error(origin: Origin, path: impl Into<String>, problem: impl Into<Problem>) -> Self {
        Self {
            severity: Severity::Error,
            origin,
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub fn warning(origin: Origin, path: impl Into<String>, problem: impl Into<Problem>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(origin, path, problem)
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
        write!(f, "{}", self.problem)
    }
}

/// Errors first, then warnings, each in file and line order.
pub fn sort(diags: &mut [Diagnostic]) {
    // The resource breaks ties of objects without lines (the cluster's), so the order
    // does not depend on the order the objects were validated in.
    diags.sort_by(|a, b| {
        (
            a.severity,
            &a.origin.file,
            a.origin.line,
            &a.origin.resource,
            &a.path,
        )
            .cmp(&(
                b.severity,
                &b.origin.file,
                b.origin.line,
                &b.origin.resource,
                &b.path,
            ))
    });
}
