//! The node table the ingest authenticates with (node → token hashes, device allow-list),
//! replaced while `serve` runs: boards are added, removed or have their token rotated
//! without a restart.
//!
//! Contract:
//! - the table comes from `[[ingest.nodes]]` of the configuration file (and each node's
//!   `token_sha256_file`); a reload reads and validates the **whole** file with
//!   [`crate::config::load`], exactly as `validate` and `serve` do;
//! - a reload happens on SIGHUP (`systemctl reload reflex-cloud`) and, when
//!   `ingest.token_reload_poll_ms` is not 0, when the configuration file or a token file
//!   changes (modification time, size or inode, polled at that interval);
//! - a file that does not validate **keeps the running table**: the error is logged with
//!   every problem and counted ([`Tokens::reload_errors`],
//!   `reflex_cloud_token_reloads_total{result="error"}`); the same bad file is not retried
//!   until it changes again or SIGHUP is sent;
//! - a good file replaces the table atomically: a request is authenticated against one
//!   table, old or new, never a mix. Requests under way finish with the table they started
//!   with; a removed node's next request is 401;
//! - only the node table is taken from the new file: any other setting that differs is
//!   logged at warn as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};
use crate::ingest::TokenTable;

/// The current node table and its reload counters, shared by the ingest and the watcher.
#[derive(Debug)]
pub struct Tokens {
    table: RwLock<Arc<TokenTable>>,
    nodes: AtomicU64,
    /// Reloads that replaced the table.
    pub reloads: AtomicU64,
    /// Reloads refused (the running table kept).
    pub reload_errors: AtomicU64,
}

impl Tokens {
    /// Starts with `table` of `nodes` nodes.
    pub fn new(table: TokenTable, nodes: usize) -> Arc<Tokens> {
        Arc::new(Tokens {
            table: RwLock::new(Arc::new(table)),
            nodes: AtomicU64::new(nodes as u64),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        })
    }

    /// The table to authenticate one request with.
    pub fn current(&self) -> Arc<TokenTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Nodes in the current table.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Replaces the table.
    pub fn replace(&self, table: TokenTable, nodes: usize) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.nodes.store(nodes as u64, Ordering::Relaxed);
    }

    /// Reads `path` and, if it validates, replaces the table with its nodes; else keeps the
    /// running table and counts the error. Returns the new configuration.
    pub fn reload(&self, path: &Path) -> Result<Config, ConfigError> {
        match config::load(path) {
            Ok(cfg) => {
                let (nodes, errors) = cfg.ingest.resolve_nodes();
                if !errors.is_empty() {
                    // load() validated them a moment ago; a token file changed since.
                    self.reload_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(ConfigError::Invalid(errors));
                }
                self.replace(TokenTable::new(&nodes), nodes.len());
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(cfg)
            }
            Err(e) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// What identifies a version of a file: modification time, size, inode (`None`: missing).
pub type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The files a reload reads: the configuration file and every node's token file.
pub fn watched_files(config_path: &Path, cfg: &Config) -> Vec<PathBuf> {
    std::iter::once(config_path.to_owned())
        .chain(
            cfg.ingest
                .nodes
                .iter()
                .filter_map(|n| n.token_sha256_file.clone()),
        )
        .collect()
}

fn stamps(files: &[PathBuf]) -> Vec<FileStamp> {
    files.iter().map(|f| stamp(f)).collect()
}

/// Settings of `new` other than the node table that differ from `running` (they need a
/// restart), by name.
pub fn changed_besides_nodes(running: &Config, new: &Config) -> Vec<&'static str> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.ingest.nodes.clear();
        c
    };
    let (a, b) = (strip(running), strip(new));
    let mut out = Vec::new();
    if a.ingest != b.ingest {
        out.push("ingest");
    }
    if a.storage != b.storage {
        out.push("storage");
    }
    if a.rescore != b.rescore {
        out.push("rescore");
    }
    out
}

/// Reloads the table on SIGHUP and, every `cfg.ingest.token_reload_poll_ms` (unless 0),
/// when a watched file changed; until `shutdown`. `cfg` is the running configuration, read
/// from `config_path`.
pub async fn watch(
    tokens: Arc<Tokens>,
    config_path: PathBuf,
    cfg: Config,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; token reload by file change only");
            None
        }
    };
    let poll = Duration::from_millis(cfg.ingest.token_reload_poll_ms);
    let mut files = watched_files(&config_path, &cfg);
    let mut seen = stamps(&files);
    let running = cfg;
    loop {
        let by_signal = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async { hup.as_mut()?.recv().await } => true,
            _ = tokio::time::sleep(poll), if !poll.is_zero() => false,
        };
        if !by_signal {
            let now = stamps(&files);
            if now == seen {
                continue;
            }
        }
        let trigger = if by_signal { "SIGHUP" } else { "file change" };
        match tokens.reload(&config_path) {
            Ok(new) => {
                tracing::info!(
                    trigger,
                    nodes = tokens.nodes(),
                    config = %config_path.display(),
                    "node table reloaded"
                );
                let ignored = changed_besides_nodes(&running, &new);
                if !ignored.is_empty() {
                    tracing::warn!(
                        sections = ?ignored,
                        "settings besides [[ingest.nodes]] changed; they take a restart"
                    );
                }
                files = watched_files(&config_path, &new);
            }
            Err(e) => tracing::error!(
                trigger,
                config = %config_path.display(),
                error = %e,
                "node table not reloaded; the running table is kept"
            ),
        }
        seen = stamps(&files);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::parse(text, "t").unwrap()
    }

    const BASE: &str = "[storage]\nkind = \"local\"\npath = \"/x\"\n";

    #[test]
    fn only_settings_besides_the_nodes_are_reported_as_needing_a_restart() {
        let a = cfg(BASE);
        let mut b = a.clone();
        b.ingest.nodes.push(config::NodeToken::new("n", "h"));
        assert!(changed_besides_nodes(&a, &b).is_empty());
        b.ingest.max_connections = 3;
        b.rescore.window_s = 60;
        assert_eq!(changed_besides_nodes(&a, &b), ["ingest", "rescore"]);
    }

    #[test]
    fn the_watched_files_are_the_config_and_every_token_file() {
        let text = format!(
            "[[ingest.nodes]]\nnode = \"a\"\ntoken_sha256_file = \"/etc/a.sha256\"\n\
             [[ingest.nodes]]\nnode = \"b\"\ntoken_sha256 = \"{}\"\n{BASE}",
            "0".repeat(64)
        );
        let files = watched_files(Path::new("/etc/c.toml"), &cfg(&text));
        assert_eq!(
            files,
            [PathBuf::from("/etc/c.toml"), PathBuf::from("/etc/a.sha256")]
        );
    }
}
