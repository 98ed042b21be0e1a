//! The one validation vocabulary of every section: [`ValidationError`] (field path, bad
//! value, reason), collected by [`Problems`] so that every problem is reported at once,
//! and [`ConfigError`], the error of loading a configuration.

use std::fmt;
use std::path::PathBuf;

/// One problem found by [`Config::validate`](super::Config::validate) or
/// [`Config::check_files`](super::Config::check_files).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}{}", from_origin(.origin))]
pub struct ValidationError {
    /// Path of the field, e.g. `routes[1].deadline_ms`.
    pub field: String,
    /// The bad value, as written in TOML (strings quoted).
    pub value: String,
    /// Why it is refused.
    pub reason: String,
    /// Where the value came from, when loaded from layers ([`super::layers`]): a file
    /// path, an environment variable (`REFLEX_MQTT__PORT`) or `default`. `None` for a
    /// config parsed from one string.
    pub origin: Option<String>,
}

fn from_origin(origin: &Option<String>) -> String {
    match origin {
        Some(o) => format!(" (from {o})"),
        None => String::new(),
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a wrong type.
    #[error("invalid config in {origin}{}: {message}", at_field(field))]
    Parse {
        /// The file name or environment variable, or `<string>` for
        /// [`parse`](super::parse).
        origin: String,
        /// Path of the offending field (`.` for the document root).
        field: String,
        /// The toml crate's message, with line, column and excerpt.
        message: String,
    },
    /// A secret file (password, token) that could not be read, or that others may read.
    #[error(transparent)]
    Secret(#[from] reflex_service::secret::SecretFileError),
    /// Values that break the rules; all of them, one per line.
    #[error("invalid config: {} problem(s):\n{}", .0.len(), join_lines(.0))]
    Invalid(Vec<ValidationError>),
}

fn at_field(field: &str) -> String {
    if field == "." {
        String::new()
    } else {
        format!(" at `{field}`")
    }
}

fn join_lines(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects validation errors, in the order found.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<ValidationError>);

impl Problems {
    pub(crate) fn add(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.0.push(ValidationError {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
            origin: None,
        });
    }

    /// `value` as a TOML string literal.
    pub(crate) fn add_str(
        &mut self,
        field: impl Into<String>,
        value: &str,
        reason: impl Into<String>,
    ) {
        self.add(field, format!("{value:?}"), reason);
    }

    pub(crate) fn range<T: PartialOrd + fmt::Display>(
        &mut self,
        field: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.add(field, &value, format!("must be in {min}..={max}"));
        }
    }
}

/// Checks a node, route or model name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub(crate) fn check_name(p: &mut Problems, field: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        p.add_str(field, name, "must be 1..=64 bytes of [A-Za-z0-9_.-]");
    }
}

/// A path option as shown in an error: quoted, or `(none)`.
pub(crate) fn show_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{:?}", p.display().to_string()),
        None => "(none)".into(),
    }
}

impl Problems {
    /// `Ok` when nothing was found, else every problem.
    pub(crate) fn into_result(self) -> Result<(), Vec<ValidationError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}
