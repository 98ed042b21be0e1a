//! `reflex-sim`: a fleet of simulated vibration sensors, written the way their firmware
//! would be (fixed buffers, `heapless`, postcard through `reflex-wire`), plus the load
//! generator and the MQTT echo floor used to benchmark `reflexd`.
//!
//! Everything except [`mqtt`] is pure and deterministic from a seed:
//! - [`rng`]: the small PRNG a microcontroller would carry;
//! - [`signal`]: machine conditions (healthy, imbalance, bearing fault, misalignment) as
//!   vibration windows and temperature;
//! - [`device`]: one sensor: sequence numbers, clock, its fixed encode buffer;
//! - [`edge_node`]: the fleet behind a Sparkplug B edge node (births, data, deaths);
//! - [`fleet`]: the load fleet's devices and its schedule, balanced over the conditions;
//! - [`scenario`]: how the fleet's rate and sensor distortion evolve (steady, burst, drift);
//! - [`faults`]: malformed, oversized, duplicated, reordered and skewed output;
//! - [`pacer`]: how many events are due at a given elapsed time;
//! - [`stream`]: scalar-stream sensors (one reading per message) and which readings
//!   complete a window reflexd assembles;
//! - [`tracker`]: matches commands to the events they answer and keeps latency figures;
//! - [`dataset`]: the labelled training set, written as `.npy` files.
//!
//! The demos' brokers ([`demo_broker`] chooses): a private mosquitto
//! ([`local_mosquitto`]) or the in-process rumqttd ([`embedded_broker`]).

pub mod dataset;
pub mod demo_broker;
pub mod device;
pub mod edge_node;
#[cfg(feature = "embedded-broker")]
pub mod embedded_broker;
pub mod faults;
pub mod fleet;
pub mod local_mosquitto;
pub mod mqtt;
pub mod pacer;
pub mod rng;
pub mod scenario;
pub mod signal;
pub mod stream;
pub mod tracker;

/// Topic a device publishes its events to.
pub fn event_topic(device: &str) -> String {
    format!("sensors/{device}/vibration")
}

/// Topic filter matching every device's events.
pub const EVENT_TOPIC_FILTER: &str = "sensors/+/vibration";

/// Topic the daemon publishes a device's commands to.
pub fn command_topic(device: &str) -> String {
    format!("actuators/{device}/cmd")
}

/// Topic filter matching every device's commands.
pub const COMMAND_TOPIC_FILTER: &str = "actuators/+/cmd";
