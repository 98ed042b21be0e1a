//! The route table every stage reads: which topics are answered, by which model, within
//! which budget, on which command topic. A reload (SIGHUP) builds a new table and swaps it
//! in whole ([`SharedRoutes`], an `ArcSwap`): a stage reads it with one atomic load, never
//! a lock, and never waits for a reload.
//!
//! Contracts:
//! - **One version per event.** The engine takes the route's current [`LiveRoute`] when
//!   it accepts an event and keeps it with the job: the event's budget, model, command
//!   topic and QoS all come from that one version, whatever a reload swaps in meanwhile.
//! - **Slots are stable.** Each route has a slot (its index in metrics, the monitor and
//!   every stage's `route: usize`) for the life of the process: a route keeps its slot
//!   across reloads (matched by name), a removed route's slot is never given to another
//!   name, an added route takes the next free one. A slot's last version stays in the
//!   table after its route is removed, so events of it already accepted are answered
//!   with it.
//! - **A removed route drains.** Only [`RouteTable::active`] routes are subscribed, but
//!   the routes the last reload removed are still matched (after the active ones) until
//!   the next reload: the broker stops sending their events once it has processed the
//!   unsubscription, and the events it sent before are answered, not refused.
//! - What a reload may change in a route is decided by `config::reload`; this module
//!   only builds tables.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, Format, InputConfig, OnBudgetUnmeetable, RouteConfig};
use crate::pipeline::types::CommandRoute;

/// One version of one route, as the stages read it.
#[derive(Debug, Clone)]
pub struct LiveRoute {
    /// Stable index: metrics, monitor, `route: usize` everywhere.
    pub slot: usize,
    /// The route's name.
    pub name: String,
    /// MQTT topic filter (a change needs a restart: see `config::reload`).
    pub topic_filter: String,
    /// QoS of the subscription.
    pub qos_in: u8,
    /// The topic level that names the device (its filter's only `+`), if any.
    pub device_level: Option<usize>,
    /// Per-event budget.
    pub budget: Duration,
    /// Index of the route's model in the engine's model list (configuration order).
    pub model: usize,
    /// Where commands go and how they are encoded.
    pub command: CommandRoute,
    /// What a reload does when the model cannot meet the budget.
    pub on_budget_unmeetable: OnBudgetUnmeetable,
    /// `[routes.input]`: how the route's payloads are read (a change needs a restart).
    pub input: Arc<InputConfig>,
    /// Whether the route's events are deduped by (device, seq) (see the admit stage).
    pub dedupes: bool,
}

impl LiveRoute {
    /// The payload format of the route's events and commands.
    pub fn format(&self) -> Format {
        self.command.format
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A route names a model the engine does not have.
    #[error("route {route}: model {model:?} is not loaded")]
    UnknownModel {
        /// The route.
        route: String,
        /// The model it names.
        model: String,
    },
}

/// The routes of one configuration, plus the removed routes' last versions.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Every route ever served, by slot.
    slots: Vec<Arc<LiveRoute>>,
    /// Slots of the configured routes, in configuration order.
    active: Vec<usize>,
    /// Slots of the routes the last reload removed: still matched, not subscribed.
    draining: Vec<usize>,
    /// `bad_input.log_every_s`: the decode stage's log interval (reloadable).
    pub bad_input_log_every: Duration,
}

/// The level of `filter` that names the device: its only `+` (None with none or several).
pub fn device_level(filter: &str) -> Option<usize> {
    let mut plus = filter
        .split('/')
        .enumerate()
        .filter(|(_, level)| *level == "+");
    match (plus.next(), plus.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

fn live(slot: usize, r: &RouteConfig, model: usize) -> LiveRoute {
    LiveRoute {
        slot,
        name: r.name.clone(),
        topic_filter: r.topic_filter.clone(),
        qos_in: r.qos_in,
        device_level: device_level(&r.topic_filter),
        budget: r.budget(),
        model,
        command: CommandRoute::of(r),
        on_budget_unmeetable: r.on_budget_unmeetable,
        input: Arc::new(r.input.clone()),
        dedupes: r.input.dedupes(),
    }
}

impl RouteTable {
    /// The table of a validated `config`, as the first of the process (slots in
    /// configuration order).
    pub fn of(config: &Config) -> Result<RouteTable, TableError> {
        RouteTable::default().next(config)
    }

    /// The table that follows this one for `config`: routes keep their slots by name,
    /// new names take the next slots, removed routes keep their last version. The model
    /// indices are `config.models`' order (the set of models needs a restart to change).
    pub fn next(&self, config: &Config) -> Result<RouteTable, TableError> {
        let mut slots = self.slots.clone();
        let mut active = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let model = config
                .models
                .keys()
                .position(|m| *m == r.model)
                .ok_or_else(|| TableError::UnknownModel {
                    route: r.name.clone(),
                    model: r.model.clone(),
                })?;
            let slot = match slots.iter().position(|s| s.name == r.name) {
                Some(i) => i,
                None => {
                    slots.push(Arc::new(live(slots.len(), r, model)));
                    slots.len() - 1
                }
            };
            slots[slot] = Arc::new(live(slot, r, model));
            active.push(slot);
        }
        let draining = self
            .active
            .iter()
            .copied()
            .filter(|s| !active.contains(s))
            .collect();
        Ok(RouteTable {
            slots,
            active,
            draining,
            bad_input_log_every: Duration::from_secs(config.bad_input.log_every_s),
        })
    }

    /// A table of these routes, all configured, whose slots are 0, 1, … (for tests and
    /// tools without a configuration).
    pub fn from_routes(routes: Vec<LiveRoute>) -> RouteTable {
        let mut routes = routes;
        routes.sort_by_key(|r| r.slot);
        RouteTable {
            active: routes.iter().map(|r| r.slot).collect(),
            draining: Vec::new(),
            slots: routes.into_iter().map(Arc::new).collect(),
            bad_input_log_every: Duration::from_secs(10),
        }
    }

    /// The current (or, for a removed route, last) version of the route in `slot`.
    pub fn slot(&self, slot: usize) -> Option<&Arc<LiveRoute>> {
        self.slots.get(slot)
    }

    /// Every slot, removed routes included.
    pub fn slots(&self) -> &[Arc<LiveRoute>] {
        &self.slots
    }

    /// The configured routes, in configuration order.
    pub fn active(&self) -> impl Iterator<Item = &Arc<LiveRoute>> {
        self.active.iter().map(|&i| &self.slots[i])
    }

    /// The routes the last reload removed (see the module doc).
    pub fn draining(&self) -> impl Iterator<Item = &Arc<LiveRoute>> {
        self.draining.iter().map(|&i| &self.slots[i])
    }

    /// The first configured route whose filter matches `topic`, else the first draining
    /// one.
    pub fn matching(&self, topic: &str) -> Option<&Arc<LiveRoute>> {
        self.active()
            .chain(self.draining())
            .find(|r| rumqttc::matches(topic, &r.topic_filter))
    }
}

/// The table the stages share; a reload stores a new one.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// A shared table holding `table`.
pub fn shared(table: RouteTable) -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &[(&str, &str, f64)]) -> Config {
        let mut text = String::from(
            "[models.edge]\nmanifest = \"e.json\"\nfallback_manifest = \"f.json\"\n\
             [models.other]\nmanifest = \"o.json\"\nfallback_manifest = \"f.json\"\n",
        );
        for (name, filter, deadline) in routes {
            text.push_str(&format!(
                "[[routes]]\nname = \"{name}\"\ntopic_filter = \"{filter}\"\nmodel = \"other\"\n\
                 deadline_ms = {deadline}\ncommand_topic = \"a/{{device}}/{name}\"\n"
            ));
        }
        crate::config::parse(&text).unwrap()
    }

    #[test]
    fn routes_keep_their_slot_by_name_and_new_names_take_the_next() {
        let first = RouteTable::of(&config(&[("a", "s/+/a", 5.0), ("b", "s/+/b", 5.0)])).unwrap();
        let second = first
            .next(&config(&[("c", "s/+/c", 5.0), ("b", "s/+/b", 9.0)]))
            .unwrap();
        let active: Vec<(usize, &str)> =
            second.active().map(|r| (r.slot, r.name.as_str())).collect();
        assert_eq!(active, [(2, "c"), (1, "b")]);
        assert_eq!(second.slot(1).unwrap().budget, Duration::from_millis(9));
        assert_eq!(second.slot(1).unwrap().model, 1, "models in config order");
        // A removed route keeps its last version, and drains until the next reload.
        assert_eq!(second.slot(0).unwrap().name, "a");
        let draining: Vec<&str> = second.draining().map(|r| r.name.as_str()).collect();
        assert_eq!(draining, ["a"]);
        assert_eq!(second.matching("s/d1/a").unwrap().slot, 0);
        assert_eq!(second.matching("s/d1/c").unwrap().slot, 2);
        let drained = second.next(&config(&[("c", "s/+/c", 5.0)])).unwrap();
        assert!(drained.matching("s/d1/a").is_none());
        assert_eq!(drained.draining().count(), 1, "b, removed by this reload");
        // Back again: its old slot.
        let third = drained.next(&config(&[("a", "s/+/a", 5.0)])).unwrap();
        assert_eq!(third.matching("s/d1/a").unwrap().slot, 0);
        assert_eq!(third.slots().len(), 3);
    }

    #[test]
    fn an_active_route_is_matched_before_a_draining_one_with_the_same_filter() {
        let first = RouteTable::of(&config(&[("a", "s/+/x", 5.0)])).unwrap();
        // Renamed: "b" takes the filter over, "a" drains.
        let second = first.next(&config(&[("b", "s/+/x", 5.0)])).unwrap();
        assert_eq!(second.matching("s/d1/x").unwrap().name, "b");
    }
}
