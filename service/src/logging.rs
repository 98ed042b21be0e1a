//! `tracing` to stderr, in a format that suits where stderr goes.
//!
//! The rule ([`LogFormat::choose`], pure):
//!
//! | where stderr goes / what is set           | format                                    |
//! |-------------------------------------------|-------------------------------------------|
//! | a forced format ([`LogOptions::with_format`])  | that one                                  |
//! | `REFLEX_LOG_FORMAT=json`                  | one JSON object per line                  |
//! | the systemd journal (`JOURNAL_STREAM`)    | text, no colours, no timestamps (journald stamps every line) |
//! | a terminal, `NO_COLOR` unset or empty     | text with colours and RFC 3339 UTC timestamps |
//! | anything else (pipe, file)                | text without colours, with timestamps      |
//!
//! `REFLEX_LOG_FORMAT=text` (or unset) leaves the choice to where stderr goes. Text lines
//! are tracing-subscriber's `fmt` format: `2026-11-29T05:35:55.564718Z  WARN target: message
//! key=value`.
//!
//! # Known noise
//!
//! A few events of our dependencies report a normal condition at ERROR; they are dropped
//! whatever the filter ([`is_known_noise`], pure), matched on target, level, message *and*
//! the field that says why, so that the same message with another cause still shows:
//!
//! | target | event | why it is noise |
//! |---|---|---|
//! | `rumqttd::server::broker` (the demo's embedded broker) | ERROR `router-drop error=Recv(Disconnected)` | the link's echo of its router closing the connection: every clean client DISCONNECT ends so. A connection the router closes for a fault is logged by the router itself, with its reason, and still shows |
//! | `rumqttd::router::routing` | ERROR `no-connection id N is already gone` | the router asked to disconnect a connection it has already removed (the client's DISCONNECT, then its link ending): nothing is left to clean up |

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Environment variable that selects the log format: `json` or `text`.
pub const FORMAT_VAR: &str = "REFLEX_LOG_FORMAT";

/// How [`init_logging`] sets up logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Environment variable holding the filter (`EnvFilter` directives, e.g.
    /// `info,reflexd::engine=debug`): `REFLEX_LOG` for every reflex binary.
    pub filter_var: &'static str,
    /// The filter when that variable is unset or not a valid filter.
    pub default_filter: &'static str,
    /// A format that wins over the environment (e.g. from a command-line flag).
    pub format: Option<LogFormat>,
}

impl LogOptions {
    /// Filter from `filter_var`, else `default_filter`; format from the environment.
    pub fn new(filter_var: &'static str, default_filter: &'static str) -> LogOptions {
        LogOptions {
            filter_var,
            default_filter,
            format: None,
        }
    }

    /// The same, always in `format`.
    pub fn with_format(self, format: LogFormat) -> LogOptions {
        LogOptions {
            format: Some(format),
            ..self
        }
    }
}

/// A log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text {
        /// ANSI colours.
        ansi: bool,
        /// A leading RFC 3339 UTC timestamp.
        timestamps: bool,
    },
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
    /// (`message` among them) at the top level, and its spans.
    Json,
}

/// What the environment says about logging, read once by [`init_logging`] (and built by
/// hand in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEnv {
    /// stderr is a terminal.
    pub stderr_is_terminal: bool,
    /// `NO_COLOR` is set and not empty (<https://no-color.org>).
    pub no_color: bool,
    /// stderr is the systemd journal's stream: `JOURNAL_STREAM` names stderr's device and
    /// inode (so a child whose stderr was redirected elsewhere does not count).
    pub journal: bool,
    /// The value of [`FORMAT_VAR`], if set.
    pub format: Option<String>,
}

impl LogEnv {
    /// Reads this process's environment and stderr.
    pub fn read() -> LogEnv {
        LogEnv {
            stderr_is_terminal: std::io::stderr().is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            journal: std::env::var("JOURNAL_STREAM")
                .ok()
                .zip(stderr_device_inode())
                .is_some_and(|(var, (dev, ino))| journal_stream_is(&var, dev, ino)),
            format: std::env::var(FORMAT_VAR).ok(),
        }
    }

    /// The value of [`FORMAT_VAR`] when it is neither `json`, `text` nor empty.
    pub fn unknown_format(&self) -> Option<&str> {
        self.format
            .as_deref()
            .filter(|f| !f.is_empty() && requested(f).is_none())
    }
}

/// A format asked for by name: Some(true) for json, Some(false) for text.
fn requested(name: &str) -> Option<bool> {
    if name.eq_ignore_ascii_case("json") {
        Some(true)
    } else if name.eq_ignore_ascii_case("text") {
        Some(false)
    } else {
        None
    }
}

impl LogFormat {
    /// The format for `env`, or `forced` when given (the table in the module docs).
    pub fn choose(env: &LogEnv, forced: Option<LogFormat>) -> LogFormat {
        if let Some(f) = forced {
            return f;
        }
        if env.format.as_deref().and_then(requested) == Some(true) {
            return LogFormat::Json;
        }
        LogFormat::Text {
            ansi: env.stderr_is_terminal && !env.no_color && !env.journal,
            timestamps: !env.journal,
        }
    }
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`, set by systemd for a service whose output
/// goes to the journal) names the stream with this device and inode.
fn journal_stream_is(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// stderr's device and inode numbers, when it can be inspected.
fn stderr_device_inode() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Installs the global `tracing` subscriber: events to stderr, filtered by
/// `options.filter_var` (else `options.default_filter`), in the format
/// [`LogFormat::choose`] picks for this process. Returns that format.
///
/// Call it once, early in `main`; a second call (or a subscriber installed elsewhere, as
/// in tests) leaves the first in place. A filter variable that is set but not a valid
/// filter, or an unknown [`FORMAT_VAR`], is reported as a warning once logging is up.
pub fn init_logging(options: &LogOptions) -> LogFormat {
    let env = LogEnv::read();
    let format = LogFormat::choose(&env, options.format);
    let (filter, bad_filter) = match EnvFilter::try_from_env(options.filter_var) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new(options.default_filter),
            std::env::var(options.filter_var).ok().map(|v| (v, e)),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .finish()
            .with(DropKnownNoise)
            .try_init(),
        LogFormat::Text {
            ansi,
            timestamps: true,
        } => builder
            .with_ansi(ansi)
            .finish()
            .with(DropKnownNoise)
            .try_init(),
        LogFormat::Text {
            ansi,
            timestamps: false,
        } => builder
            .with_ansi(ansi)
            .without_time()
            .finish()
            .with(DropKnownNoise)
            .try_init(),
    };
    if installed.is_ok() {
        if let Some((value, e)) = bad_filter {
            tracing::warn!(
                "{}={value:?} is not a valid filter ({e}); using {:?}",
                options.filter_var,
                options.default_filter
            );
        }
        if let Some(f) = env.unknown_format() {
            tracing::warn!("{FORMAT_VAR}={f:?} is neither \"json\" nor \"text\"; using text");
        }
    }
    format
}

/// Whether an event is one of the known noise events (the table in the module docs):
/// `message` is the event's message, `error` the `Debug` form of its `error` field.
pub fn is_known_noise(target: &str, level: Level, message: &str, error: Option<&str>) -> bool {
    if level != Level::ERROR {
        return false;
    }
    match target {
        "rumqttd::server::broker" => {
            message == "router-drop" && error == Some("Recv(Disconnected)")
        }
        "rumqttd::router::routing" => {
            error.is_none()
                && message
                    .strip_prefix("no-connection id ")
                    .and_then(|rest| rest.strip_suffix(" is already gone"))
                    .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        }
        _ => false,
    }
}

/// The layer that drops [`is_known_noise`] events before any output sees them.
struct DropKnownNoise;

impl<S: Subscriber> Layer<S> for DropKnownNoise {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Only ERROR events of the listed targets are worth reading the fields of.
        if *meta.level() != Level::ERROR || !meta.target().starts_with("rumqttd") {
            return true;
        }
        let mut fields = MessageAndError::default();
        event.record(&mut fields);
        !is_known_noise(
            meta.target(),
            *meta.level(),
            &fields.message,
            fields.error.as_deref(),
        )
    }
}

/// The `message` and `error` fields of an event, as `Debug` text.
#[derive(Default)]
struct MessageAndError {
    message: String,
    error: Option<String>,
}

impl Visit for MessageAndError {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_brokers_clean_disconnect_echoes_are_noise() {
        assert!(is_known_noise(
            "rumqttd::server::broker",
            Level::ERROR,
            "router-drop",
            Some("Recv(Disconnected)")
        ));
        assert!(is_known_noise(
            "rumqttd::router::routing",
            Level::ERROR,
            "no-connection id 17 is already gone",
            None
        ));
    }

    #[test]
    fn the_same_message_with_another_cause_or_source_still_shows() {
        let target = "rumqttd::server::broker";
        for (t, level, message, error) in [
            (
                target,
                Level::ERROR,
                "router-drop",
                Some("Send(SendError { .. })"),
            ),
            (target, Level::ERROR, "router-drop", None),
            (
                target,
                Level::ERROR,
                "disconnected",
                Some("Recv(Disconnected)"),
            ),
            (
                target,
                Level::ERROR,
                "Remote link error",
                Some("Recv(Disconnected)"),
            ),
            (
                "rumqttd::router::routing",
                Level::ERROR,
                "router-drop",
                Some("Recv(Disconnected)"),
            ),
            (
                "reflexd::pipeline",
                Level::ERROR,
                "router-drop",
                Some("Recv(Disconnected)"),
            ),
            (
                target,
                Level::WARN,
                "router-drop",
                Some("Recv(Disconnected)"),
            ),
            (
                "rumqttd::router::routing",
                Level::ERROR,
                "no-connection id x is already gone",
                None,
            ),
            (
                "rumqttd::router::routing",
                Level::ERROR,
                "no space for new connection",
                None,
            ),
        ] {
            assert!(
                !is_known_noise(t, level, message, error),
                "{t} {message} {error:?}"
            );
        }
    }

    #[test]
    fn the_layer_drops_the_noise_and_lets_real_errors_through() {
        use std::sync::{Arc, Mutex};
        /// Collects the message of every event that reaches it.
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Seen {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let mut f = MessageAndError::default();
                event.record(&mut f);
                self.0.lock().unwrap().push(f.message);
            }
        }
        #[derive(Debug)]
        enum LinkError {
            Recv(Disconnected),
            Send(Full),
        }
        #[derive(Debug)]
        struct Disconnected;
        #[derive(Debug)]
        struct Full;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(DropKnownNoise)
            .with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::server::broker", error = ?LinkError::Recv(Disconnected), "router-drop");
            tracing::error!(target: "rumqttd::server::broker", error = ?LinkError::Send(Full), "router-drop");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 1);
            tracing::error!(target: "rumqttd::router::routing", "no space for new connection");
            tracing::info!(target: "reflexd", "ready");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            ["router-drop", "no space for new connection", "ready"]
        );
    }

    fn terminal() -> LogEnv {
        LogEnv {
            stderr_is_terminal: true,
            ..LogEnv::default()
        }
    }

    const PLAIN: LogFormat = LogFormat::Text {
        ansi: false,
        timestamps: true,
    };

    #[test]
    fn a_terminal_gets_colours_and_timestamps() {
        assert_eq!(
            LogFormat::choose(&terminal(), None),
            LogFormat::Text {
                ansi: true,
                timestamps: true
            }
        );
    }

    #[test]
    fn a_pipe_or_file_gets_no_colours() {
        assert_eq!(LogFormat::choose(&LogEnv::default(), None), PLAIN);
    }

    #[test]
    fn no_color_turns_colours_off_on_a_terminal() {
        let env = LogEnv {
            no_color: true,
            ..terminal()
        };
        assert_eq!(LogFormat::choose(&env, None), PLAIN);
    }

    #[test]
    fn the_journal_gets_neither_colours_nor_timestamps() {
        let journal = LogFormat::Text {
            ansi: false,
            timestamps: false,
        };
        for stderr_is_terminal in [false, true] {
            let env = LogEnv {
                stderr_is_terminal,
                journal: true,
                ..LogEnv::default()
            };
            assert_eq!(LogFormat::choose(&env, None), journal);
        }
    }

    #[test]
    fn json_is_chosen_by_the_variable_in_any_case_and_a_forced_format_wins() {
        for value in ["json", "JSON", "Json"] {
            let env = LogEnv {
                format: Some(value.into()),
                journal: true,
                ..terminal()
            };
            assert_eq!(LogFormat::choose(&env, None), LogFormat::Json, "{value}");
            assert_eq!(LogFormat::choose(&env, Some(PLAIN)), PLAIN);
        }
        assert_eq!(
            LogFormat::choose(&LogEnv::default(), Some(LogFormat::Json)),
            LogFormat::Json
        );
    }

    #[test]
    fn text_or_an_unknown_value_leaves_the_choice_to_stderr_and_only_the_latter_is_unknown() {
        for (value, unknown) in [("text", None), ("", None), ("yaml", Some("yaml"))] {
            let env = LogEnv {
                format: Some(value.into()),
                ..LogEnv::default()
            };
            assert_eq!(LogFormat::choose(&env, None), PLAIN, "{value}");
            assert_eq!(env.unknown_format(), unknown);
        }
    }

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
        assert!(!journal_stream_is("8", 8, 12345));
        assert!(!journal_stream_is("x:y", 8, 12345));
    }
}
