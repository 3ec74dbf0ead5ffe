//! Input errors: every one names the file, line and column, the field, and what was
//! expected.

use super::position::Positions;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Field path, e.g. `spec.networking.podSubnet` (empty for whole-file problems).
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// All problems found in the input (never just the first).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecErrors {
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the cluster definition:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors { errors: vec![e] }
    }
}

/// Collects errors for one file, looking up positions by field path.
#[derive(Debug)]
pub struct Reporter<'a> {
    pub file: &'a Path,
    pub positions: &'a Positions,
    pub errors: Vec<SpecError>,
    pub warnings: Vec<SpecError>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, positions: &'a Positions) -> Self {
        Reporter {
            file,
            positions,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn make(&self, field: &str, message: impl Into<String>) -> SpecError {
        let pos = self.positions.find(field);
        SpecError {
            file: self.file.to_path_buf(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Report a problem with `field`. A field that already has an error, in itself or
    /// inside it (e.g. a value of the wrong type that was left out), gets no second,
    /// consequential one.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let inside = |f: &str| {
            f == field
                || f.strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        };
        if self.errors.iter().any(|e| inside(&e.field)) {
            return;
        }
        let e = self.make(field, message);
        self.errors.push(e);
    }

    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        let e = self.make(field, message);
        self.warnings.push(e);
    }
}
