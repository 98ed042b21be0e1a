//! Secret files (a password, a token, token hashes): read only when their mode keeps them
//! between the owner and the group's readers.

use std::path::{Path, PathBuf};

/// Mode bits a secret file must not have: group write or execute, and any access by
/// others. Group read stays allowed, for the packaged `root:<service group> 0640`.
pub const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o037;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Readable or writable by more than its owner and group readers.
    #[error(
        "{path} has mode {mode:04o}, open to group write or to others; \
         chmod it 0640 or 0600 (forbidden bits {SECRET_FILE_FORBIDDEN_MODE:04o})"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Reads a secret file after checking that its mode has none of
/// [`SECRET_FILE_FORBIDDEN_MODE`] (on unix; elsewhere the mode is not checked). The mode of
/// the file a symlink points to is what counts.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let read = |source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
            return Err(SecretFileError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    std::fs::read_to_string(path).map_err(read)
}
