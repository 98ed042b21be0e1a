//! A refused configuration file: reported on stderr, exit code 64.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for a bad configuration file or bad arguments: sysexits' `EX_USAGE` (64).
/// systemd's `RestartPreventExitStatus=` and scripts tell it from a failure (1).
pub const EXIT_CONFIG: u8 = 64;

/// Why a configuration file was refused, as printed before exiting [`EXIT_CONFIG`].
///
/// Its `Display` is either every validation problem,
///
/// ```text
/// cloud.toml: 2 error(s):
///   ingest.listen = "nope": not host:port
///   storage.path: empty
/// ```
///
/// (each problem indented by two spaces, as its own `Display` writes it), or one error that
/// stopped reading the file (`cloud.toml: cannot read cloud.toml: No such file…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    path: PathBuf,
    problems: Problems,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problems {
    /// Every validation error, one per line.
    Invalid(Vec<String>),
    /// The file could not be read or parsed.
    Other(String),
}

impl ConfigReport {
    /// Every problem validation found in the file at `path` (not empty, in the order the
    /// validator found them).
    pub fn invalid<E: fmt::Display>(
        path: impl AsRef<Path>,
        errors: impl IntoIterator<Item = E>,
    ) -> ConfigReport {
        ConfigReport {
            path: path.as_ref().to_owned(),
            problems: Problems::Invalid(errors.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    /// One error that kept the file at `path` from being read or parsed.
    pub fn other(path: impl AsRef<Path>, error: impl fmt::Display) -> ConfigReport {
        ConfigReport {
            path: path.as_ref().to_owned(),
            problems: Problems::Other(error.to_string()),
        }
    }

    /// How many problems the report lists (1 for [`ConfigReport::other`]).
    pub fn len(&self) -> usize {
        match &self.problems {
            Problems::Invalid(errors) => errors.len(),
            Problems::Other(_) => 1,
        }
    }

    /// Whether the report lists no problem (an [`ConfigReport::invalid`] given none).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prints `{lead}{self}` to stderr and returns [`EXIT_CONFIG`] for `main` to return.
    /// `lead` names the program, e.g. `"reflex-cloud: "`.
    pub fn exit(&self, lead: &str) -> ExitCode {
        eprintln!("{lead}{self}");
        ExitCode::from(EXIT_CONFIG)
    }
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.problems {
            Problems::Invalid(errors) => {
                write!(f, "{path}: {} error(s):", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            Problems::Other(error) => write!(f, "{path}: {error}"),
        }
    }
}

impl std::error::Error for ConfigReport {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_validation_error_is_listed_on_its_own_indented_line_after_the_count() {
        let r = ConfigReport::invalid(
            "cloud.toml",
            [
                "ingest.listen = \"nope\": not host:port",
                "storage.path: empty",
            ],
        );
        assert_eq!(
            r.to_string(),
            "cloud.toml: 2 error(s):\n  ingest.listen = \"nope\": not host:port\n  storage.path: empty"
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn an_error_that_stopped_reading_follows_the_path() {
        let r = ConfigReport::other("/etc/reflex.toml", "cannot read /etc/reflex.toml: gone");
        assert_eq!(
            r.to_string(),
            "/etc/reflex.toml: cannot read /etc/reflex.toml: gone"
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_exit_code_is_64() {
        assert_eq!(EXIT_CONFIG, 64);
        let code = ConfigReport::other("x.toml", "bad").exit("test: ");
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::from(64)));
    }
}

/// Where a TOML document did not deserialize: the path of the offending key (`.` for the
/// document itself) and the toml crate's message (line, column and excerpt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// Path of the offending key.
    pub field: String,
    /// What the parser said, without a trailing newline.
    pub message: String,
}

/// Deserializes TOML `text` into `T`, naming the key that failed (no validation of values:
/// that is each program's own).
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let error = |field: String, e: &toml::de::Error| TomlError {
        field,
        message: e.to_string().trim_end().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| error(".".into(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        error(field, e.inner())
    })
}
