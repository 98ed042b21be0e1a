//! Process plumbing shared by `reflexd`, `reflex-sim` and `reflex-cloud`.
//!
//! Every binary of the workspace needs the same three things around its real work, and
//! each used to carry its own copy:
//!
//! - [`shutdown_on_signals`]: a [`CancellationToken`](tokio_util::sync::CancellationToken)
//!   cancelled on the first SIGINT or SIGTERM.
//! - [`ConfigReport`] and [`EXIT_CONFIG`]: a refused configuration file printed to stderr as
//!   `<path>: <n> error(s):` followed by one indented line per problem, and exit code 64.
//! - [`init_logging`]: `tracing` to stderr, filtered by an environment variable, with a
//!   format chosen from where stderr goes (terminal, pipe, the systemd journal) and
//!   `NO_COLOR` / `REFLEX_LOG_FORMAT` ([`LogFormat::choose`] is the pure rule).
//! - [`secret::read_secret_file`]: a password or token file, refused when others may
//!   read it.
//! - [`exposition`]: Prometheus text exposition helpers (headers, label escaping, values).
//!
//! # Adopting it in a binary
//!
//! ```no_run
//! use std::process::ExitCode;
//! use reflex_service::{init_logging, shutdown_on_signals, ConfigReport, LogOptions};
//!
//! # #[derive(Debug)] struct Config;
//! # fn parse_and_validate(_: &std::path::Path) -> Result<Config, Vec<String>> { Ok(Config) }
//! fn main() -> ExitCode {
//!     // Before anything logs; REFLEX_LOG overrides the default filter.
//!     init_logging(&LogOptions::new("REFLEX_LOG", "info,rumqttd=warn"));
//!     let path = std::path::Path::new("reflex.toml");
//!     let config = match parse_and_validate(path) {
//!         Ok(c) => c,
//!         // Prints "reflexd: invalid configuration: reflex.toml: 2 error(s):\n  …"; 64.
//!         Err(errors) => {
//!             return ConfigReport::invalid(path, errors).exit("reflexd: invalid configuration: ")
//!         }
//!     };
//!     let rt = tokio::runtime::Runtime::new().expect("runtime");
//!     rt.block_on(async {
//!         let (stop, signals) = shutdown_on_signals();
//!         // ... run until `stop` is cancelled ...
//!         # let _ = (&config, stop);
//!         signals.abort();
//!     });
//!     ExitCode::SUCCESS
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
pub mod exposition;
mod logging;
pub mod secret;
mod signals;

pub use config::{parse_toml, ConfigReport, TomlError, EXIT_CONFIG};
pub use logging::{init_logging, LogEnv, LogFormat, LogOptions, FORMAT_VAR};
pub use signals::shutdown_on_signals;
