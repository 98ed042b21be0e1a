//! The broker of the demos (`reflexd demo`, `reflex-sim demo`), chosen by
//! [`BROKER_VAR`] ([`Choice::from_env_value`], pure):
//!
//! | `REFLEX_DEMO_BROKER` | broker |
//! |---|---|
//! | unset, empty or `auto` | a private mosquitto ([`crate::local_mosquitto`]) when mosquitto is installed, else the embedded rumqttd with a note saying why its figures are slow |
//! | `mosquitto` | the private mosquitto; an error when mosquitto is not installed |
//! | `embedded` | the embedded rumqttd (`crate::embedded_broker`) |
//!
//! The embedded rumqttd is built only with the `embedded-broker` feature ([`EMBEDDED`]);
//! without it, `auto` and `embedded` without mosquitto are an error that says how to get
//! either broker.
//!
//! mosquitto sets TCP_NODELAY on the connections it accepts (`set_tcp_nodelay true`), as
//! on a board: the echo floor is a fraction of a millisecond. rumqttd has no such option
//! (0.20: neither its config nor its accept loop sets it), so every small packet it sends
//! waits on Nagle's algorithm and the round trip is ~10 ms. Every client of the demos sets
//! TCP_NODELAY itself ([`crate::mqtt::client`]). A private mosquitto is stopped on drop;
//! rumqttd has no shutdown and ends with the process.

use crate::local_mosquitto::{find, LocalMosquitto, LocalMosquittoError};

/// Whether this build has the embedded rumqttd (feature `embedded-broker`).
pub const EMBEDDED: bool = cfg!(feature = "embedded-broker");

/// Environment variable choosing the demos' broker (see the module docs).
pub const BROKER_VAR: &str = "REFLEX_DEMO_BROKER";

/// What [`BROKER_VAR`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// mosquitto when installed, else rumqttd.
    Auto,
    /// mosquitto or an error.
    Mosquitto,
    /// rumqttd.
    Embedded,
}

/// Why the demo's broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DemoBrokerError {
    /// [`BROKER_VAR`] holds something else.
    #[error("{BROKER_VAR}={value:?}: expected \"auto\", \"mosquitto\" or \"embedded\"")]
    UnknownChoice {
        /// The value found.
        value: String,
    },
    /// mosquitto was asked for and is not installed.
    #[error("{BROKER_VAR}=mosquitto but no mosquitto on PATH, /usr/sbin or /usr/local/sbin (Debian: apt-get install mosquitto)")]
    MosquittoMissing,
    /// The private mosquitto did not start.
    #[error(transparent)]
    Mosquitto(#[from] LocalMosquittoError),
    /// Neither mosquitto is installed nor rumqttd built in.
    #[error("no broker for the demo: mosquitto is not installed (Debian: apt-get install mosquitto; `scripts/demo` does it) and this build has no embedded broker (cargo feature `embedded-broker`)")]
    NoBroker,
    /// rumqttd did not start.
    #[error("starting the embedded broker: {0}")]
    Embedded(std::io::Error),
}

impl Choice {
    /// The choice a value of [`BROKER_VAR`] (`None`: unset) makes.
    pub fn from_env_value(value: Option<&str>) -> Result<Choice, DemoBrokerError> {
        match value.unwrap_or("") {
            "" | "auto" => Ok(Choice::Auto),
            "mosquitto" => Ok(Choice::Mosquitto),
            "embedded" => Ok(Choice::Embedded),
            other => Err(DemoBrokerError::UnknownChoice {
                value: other.to_owned(),
            }),
        }
    }
}

#[cfg(feature = "embedded-broker")]
fn start_embedded() -> Result<DemoBroker, DemoBrokerError> {
    crate::embedded_broker::start()
        .map(DemoBroker::Embedded)
        .map_err(DemoBrokerError::Embedded)
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded() -> Result<DemoBroker, DemoBrokerError> {
    Err(DemoBrokerError::NoBroker)
}

/// The running broker.
#[derive(Debug)]
pub enum DemoBroker {
    /// A private mosquitto (stopped on drop), from this binary.
    Mosquitto(LocalMosquitto, std::path::PathBuf),
    /// The embedded rumqttd on this port.
    Embedded(u16),
}

impl DemoBroker {
    /// Starts the broker [`BROKER_VAR`] asks for.
    pub fn start_from_env() -> Result<DemoBroker, DemoBrokerError> {
        let value = std::env::var(BROKER_VAR).ok();
        DemoBroker::start(Choice::from_env_value(value.as_deref())?)
    }

    /// Starts the broker `choice` asks for.
    pub fn start(choice: Choice) -> Result<DemoBroker, DemoBrokerError> {
        let mosquitto = match choice {
            Choice::Embedded => None,
            Choice::Auto | Choice::Mosquitto => find(std::env::var_os("PATH").as_deref()),
        };
        match (mosquitto, choice) {
            (Some(bin), _) => Ok(DemoBroker::Mosquitto(LocalMosquitto::start(&bin)?, bin)),
            (None, Choice::Mosquitto) => Err(DemoBrokerError::MosquittoMissing),
            (None, _) => start_embedded(),
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            DemoBroker::Mosquitto(m, _) => m.port(),
            DemoBroker::Embedded(port) => *port,
        }
    }

    /// Whether its figures carry rumqttd's Nagle delay.
    pub fn is_embedded(&self) -> bool {
        matches!(self, DemoBroker::Embedded(_))
    }

    /// What to tell the user about it, one line each.
    pub fn banner(&self) -> Vec<String> {
        match self {
            DemoBroker::Mosquitto(m, bin) => vec![format!(
                "broker: mosquitto ({}) on 127.0.0.1:{}, settings of cross/mosquitto/reflex.conf (TCP_NODELAY on)",
                bin.display(),
                m.port()
            )],
            DemoBroker::Embedded(port) => vec![
                format!("broker: embedded rumqttd on 127.0.0.1:{port}"),
                "note: rumqttd sets no TCP_NODELAY on the connections it accepts, so every figure".into(),
                "      below carries its ~10 ms floor; with mosquitto installed (Debian: apt-get".into(),
                "      install mosquitto) the demo runs on it and shows the real floor, well under 1 ms.".into(),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_empty_and_auto_mean_auto() {
        for v in [None, Some(""), Some("auto")] {
            assert_eq!(Choice::from_env_value(v).unwrap(), Choice::Auto, "{v:?}");
        }
        assert_eq!(
            Choice::from_env_value(Some("mosquitto")).unwrap(),
            Choice::Mosquitto
        );
        assert_eq!(
            Choice::from_env_value(Some("embedded")).unwrap(),
            Choice::Embedded
        );
    }

    #[test]
    fn another_value_is_refused_by_name() {
        let e = Choice::from_env_value(Some("rabbitmq")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "REFLEX_DEMO_BROKER=\"rabbitmq\": expected \"auto\", \"mosquitto\" or \"embedded\""
        );
    }

    #[test]
    fn the_embedded_brokers_banner_says_why_it_is_slow() {
        let text = DemoBroker::Embedded(1883).banner().join("\n");
        assert!(text.contains("sets no TCP_NODELAY"), "{text}");
        assert!(text.contains("apt-get"), "{text}");
    }
}
