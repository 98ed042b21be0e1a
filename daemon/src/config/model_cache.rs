//! `[model_cache]`: where the results of the models' start-up checks (golden vectors,
//! calibration) are kept between starts, so that a restart with the same models on the
//! same board serves at once and re-checks in the background.
//!
//! The directory is `dir` when set, else `$STATE_DIRECTORY/model-cache` (systemd sets
//! `STATE_DIRECTORY` from the unit's `StateDirectory=`), else there is no cache and every
//! start checks and calibrates before serving. [`ModelCacheConfig::resolve_dir`] decides
//! from the variable's value, which the caller reads: this module does no I/O.

use std::ffi::OsStr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{show_path, Problems};

/// Subdirectory of `$STATE_DIRECTORY` used when `model_cache.dir` is not set.
pub const STATE_SUBDIR: &str = "model-cache";

/// `[model_cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCacheConfig {
    /// Keep and use the cache. Default: `true` (it still needs a directory: `dir` or
    /// `$STATE_DIRECTORY`). `false`: every start checks and calibrates before serving.
    pub enabled: bool,
    /// Directory of the cache files, one per model (created if missing, mode 0750).
    /// Default: `$STATE_DIRECTORY/model-cache` when that variable is set, else no cache.
    pub dir: Option<PathBuf>,
}

impl Default for ModelCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
        }
    }
}

impl ModelCacheConfig {
    /// The cache directory, given the value of `$STATE_DIRECTORY` (`None`: unset). systemd
    /// joins several state directories with `:`; the first is used. `None`: no cache.
    pub fn resolve_dir(&self, state_directory: Option<&OsStr>) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        if let Some(dir) = &self.dir {
            return Some(dir.clone());
        }
        let first = state_directory?.to_str()?.split(':').next()?;
        if first.is_empty() {
            return None;
        }
        Some(PathBuf::from(first).join(STATE_SUBDIR))
    }

    pub(super) fn validate(&self, p: &mut Problems) {
        match &self.dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                p.add_str("model_cache.dir", "", "must name a directory");
            }
            Some(_) if !self.enabled => p.add(
                "model_cache.dir",
                show_path(&self.dir),
                "set while model_cache.enabled is false: remove it or enable the cache",
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cache(enabled: bool, dir: Option<&str>) -> ModelCacheConfig {
        ModelCacheConfig {
            enabled,
            dir: dir.map(PathBuf::from),
        }
    }

    fn problems(c: &ModelCacheConfig) -> Vec<String> {
        let mut p = Problems::default();
        c.validate(&mut p);
        p.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn an_explicit_dir_wins_over_the_state_directory() {
        let c = cache(true, Some("/srv/cache"));
        let dir = c.resolve_dir(Some(OsStr::new("/var/lib/reflex")));
        assert_eq!(dir.as_deref(), Some(Path::new("/srv/cache")));
    }

    #[test]
    fn without_a_dir_the_first_state_directory_is_used() {
        let c = ModelCacheConfig::default();
        let dir = c.resolve_dir(Some(OsStr::new("/var/lib/reflex:/var/lib/other")));
        assert_eq!(
            dir.as_deref(),
            Some(Path::new("/var/lib/reflex/model-cache"))
        );
    }

    #[test]
    fn without_a_dir_or_a_state_directory_there_is_no_cache() {
        let c = ModelCacheConfig::default();
        assert_eq!(c.resolve_dir(None), None);
        assert_eq!(c.resolve_dir(Some(OsStr::new(""))), None);
    }

    #[test]
    fn a_disabled_cache_has_no_directory() {
        let c = cache(false, None);
        assert_eq!(c.resolve_dir(Some(OsStr::new("/var/lib/reflex"))), None);
    }

    #[test]
    fn an_empty_dir_is_refused_with_its_value() {
        assert_eq!(
            problems(&cache(true, Some(""))),
            ["model_cache.dir = \"\": must name a directory"]
        );
    }

    #[test]
    fn a_dir_set_while_disabled_is_refused_with_its_value() {
        let errors = problems(&cache(false, Some("/srv/cache")));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("model_cache.dir = \"/srv/cache\": set while"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_section_is_refused_naming_it() {
        let err = crate::config::parse("[model_cache]\ndirectory = \"/srv\"\n").unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn the_section_parses_into_its_fields() {
        let c = crate::config::parse("[model_cache]\nenabled = true\ndir = \"/srv/c\"\n").unwrap();
        assert_eq!(c.model_cache, cache(true, Some("/srv/c")));
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(problems(&ModelCacheConfig::default()).is_empty());
    }
}
