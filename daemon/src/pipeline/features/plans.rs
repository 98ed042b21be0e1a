//! Which [`FeaturePlan`] an event's record gets: the plan of the model its route had in
//! the route version the engine accepted the event under.
//!
//! Contracts:
//! - **The plan follows the route version.** Each version of a route (a
//!   [`LiveRoute`] of the route table) is registered here with the plan of its model
//!   *before* its table is stored ([`RoutePlans::routes_changed`]), so an event accepted
//!   under a new version (a route switched to another model, or added by a reload) finds
//!   the new model's plan, and an event accepted under an older version keeps the older
//!   version's plan, whenever it is decided. A version is known by the address of its
//!   command side ([`Answer::to`](crate::pipeline::types::Answer::to) is part of the
//!   version the event's job holds): this registry holds every version it names, so no
//!   other version can take that address while it is registered; a version no longer in
//!   the table and held by no job is dropped at the next change.
//! - **A model reloaded in place** (its manifest changed, the route versions unchanged)
//!   replaces the plan of every version that serves it ([`RoutePlans::model_changed`]):
//!   events decided from then on get the new plan, as the workers get the new model at
//!   their next event.
//! - Readers (the decide stage, on the engine's threads) take no lock: one atomic load
//!   and a scan of the few registered versions. Writers (start, the reloader) are
//!   serialised by a lock of their own.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::FeaturePlan;
use crate::pipeline::routes::{LiveRoute, RouteTable};
use crate::pipeline::types::CommandRoute;

/// One registered route version and its plan.
#[derive(Debug, Clone)]
struct Registered {
    route: Arc<LiveRoute>,
    plan: Arc<FeaturePlan>,
}

/// What readers load at once.
#[derive(Debug, Default)]
struct State {
    /// By model index (the engine's model order, `config.models`).
    models: Vec<Arc<FeaturePlan>>,
    /// The current table's versions first, in slot order, then older ones still held.
    versions: Vec<Registered>,
}

/// The feature plans of the route versions events may still be decided under (module
/// doc).
#[derive(Debug)]
pub struct RoutePlans {
    state: ArcSwap<State>,
    write: Mutex<()>,
    demo: Arc<FeaturePlan>,
}

impl RoutePlans {
    /// The plans of `table`'s versions, from each model's plan (`models`, by model index;
    /// a version whose model has none gets [`FeaturePlan::Demo`]).
    pub fn new(models: Vec<FeaturePlan>, table: &RouteTable) -> RoutePlans {
        let plans = RoutePlans {
            state: ArcSwap::from_pointee(State {
                models: models.into_iter().map(Arc::new).collect(),
                versions: Vec::new(),
            }),
            write: Mutex::new(()),
            demo: Arc::new(FeaturePlan::Demo),
        };
        plans.routes_changed(table);
        plans
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn plan_of_model(&self, models: &[Arc<FeaturePlan>], model: usize) -> Arc<FeaturePlan> {
        models.get(model).unwrap_or(&self.demo).clone()
    }

    /// Registers the versions of `table`, which is about to be stored, with their
    /// models' plans; older versions are kept while a job may hold them.
    pub fn routes_changed(&self, table: &RouteTable) {
        let _w = self.writer();
        let old = self.state.load_full();
        let mut versions: Vec<Registered> = table
            .slots()
            .iter()
            .map(|r| Registered {
                route: r.clone(),
                plan: old
                    .versions
                    .iter()
                    .find(|v| Arc::ptr_eq(&v.route, r))
                    .map_or_else(
                        || self.plan_of_model(&old.models, r.model),
                        |v| v.plan.clone(),
                    ),
            })
            .collect();
        for v in &old.versions {
            let listed = versions.iter().any(|n| Arc::ptr_eq(&n.route, &v.route));
            // Held by more than the old state: the stored table or an event's job.
            if !listed && Arc::strong_count(&v.route) > 1 {
                versions.push(v.clone());
            }
        }
        self.state.store(Arc::new(State {
            models: old.models.clone(),
            versions,
        }));
    }

    /// Model `model` (index) was reloaded with `plan`: every registered version that
    /// serves it gets the new plan.
    pub fn model_changed(&self, model: usize, plan: FeaturePlan) {
        let _w = self.writer();
        let old = self.state.load_full();
        let plan = Arc::new(plan);
        let mut models = old.models.clone();
        if let Some(m) = models.get_mut(model) {
            *m = plan.clone();
        }
        let versions = old
            .versions
            .iter()
            .map(|v| Registered {
                route: v.route.clone(),
                plan: if v.route.model == model {
                    plan.clone()
                } else {
                    v.plan.clone()
                },
            })
            .collect();
        self.state.store(Arc::new(State { models, versions }));
    }

    /// The plan of the version of route `slot` whose command side is `to` (the version an
    /// event was accepted under); a version not registered (a table built elsewhere, in
    /// tests) gets the plan of the slot's current version, else [`FeaturePlan::Demo`].
    pub fn of(&self, slot: usize, to: &CommandRoute) -> Arc<FeaturePlan> {
        let state = self.state.load();
        let mut current = None;
        for v in state.versions.iter().filter(|v| v.route.slot == slot) {
            if std::ptr::eq(&v.route.command, to) {
                return v.plan.clone();
            }
            current.get_or_insert(&v.plan);
        }
        current.unwrap_or(&self.demo).clone()
    }

    /// How many route versions are registered (current and still held).
    pub fn versions(&self) -> usize {
        self.state.load().versions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[(&str, &str)]) -> crate::config::Config {
        let mut text = String::from(
            "[models.edge]\nmanifest = \"e.json\"\nfallback_manifest = \"f.json\"\n\
             [models.motor]\nmanifest = \"m.json\"\nfallback_manifest = \"f.json\"\n",
        );
        for (name, model) in models {
            text.push_str(&format!(
                "[[routes]]\nname = \"{name}\"\ntopic_filter = \"s/+/{name}\"\nmodel = \"{model}\"\n\
                 deadline_ms = 5.0\ncommand_topic = \"a/{{device}}/{name}\"\n"
            ));
        }
        crate::config::parse(&text).unwrap()
    }

    /// A plan told apart from the demo one: a format-2 plan of the test model named
    /// `name`.
    fn declared(name: &str) -> FeaturePlan {
        let mut m = reflex_models::Manifest::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/examples/test/score16.manifest.json"
        ))
        .unwrap();
        m.name = name.into();
        FeaturePlan::of(&m)
    }

    fn model_of(plan: &FeaturePlan) -> Option<String> {
        plan.feature_set().map(|s| s.set().model.name.clone())
    }

    #[test]
    fn an_event_keeps_the_plan_of_the_version_it_was_accepted_under() {
        let first = RouteTable::of(&config(&[("a", "edge")])).unwrap();
        let plans = RoutePlans::new(vec![FeaturePlan::Demo, declared("motor")], &first);
        // An event accepted under the first table: its job holds that version.
        let held = first.slot(0).unwrap().clone();
        assert!(
            model_of(&plans.of(0, &held.command)).is_none(),
            "edge: the demo plan"
        );

        // Reload: route a switched to the motor model, route b added on it.
        let second = first
            .next(&config(&[("a", "motor"), ("b", "motor")]))
            .unwrap();
        plans.routes_changed(&second);
        let (a, b) = (second.slot(0).unwrap(), second.slot(1).unwrap());
        assert_eq!(model_of(&plans.of(0, &a.command)).as_deref(), Some("motor"));
        assert_eq!(model_of(&plans.of(1, &b.command)).as_deref(), Some("motor"));
        assert!(
            model_of(&plans.of(0, &held.command)).is_none(),
            "accepted before the swap: the old plan"
        );

        // Once nothing holds the old version (its job done, the first table dropped),
        // the next change forgets it.
        assert_eq!(plans.versions(), 3);
        drop((held, first));
        plans.routes_changed(&second);
        assert_eq!(plans.versions(), 2);
    }

    #[test]
    fn a_model_reloaded_in_place_gives_its_routes_the_new_plan() {
        let table = RouteTable::of(&config(&[("a", "edge"), ("b", "motor")])).unwrap();
        let plans = RoutePlans::new(vec![FeaturePlan::Demo, declared("motor")], &table);
        let (a, b) = (table.slot(0).unwrap(), table.slot(1).unwrap());
        plans.model_changed(1, declared("motor-v2"));
        assert_eq!(
            model_of(&plans.of(1, &b.command)).as_deref(),
            Some("motor-v2")
        );
        assert!(
            model_of(&plans.of(0, &a.command)).is_none(),
            "edge untouched"
        );
        // A route switched to it later gets the new plan too.
        let next = table
            .next(&config(&[("a", "motor"), ("b", "motor")]))
            .unwrap();
        plans.routes_changed(&next);
        let a = next.slot(0).unwrap();
        assert_eq!(
            model_of(&plans.of(0, &a.command)).as_deref(),
            Some("motor-v2")
        );
    }

    #[test]
    fn a_version_not_registered_gets_its_slots_current_plan_or_the_demo_one() {
        let table = RouteTable::of(&config(&[("a", "motor")])).unwrap();
        let plans = RoutePlans::new(vec![FeaturePlan::Demo, declared("motor")], &table);
        let stranger = CommandRoute::of(&config(&[("a", "motor")]).routes[0]);
        assert_eq!(model_of(&plans.of(0, &stranger)).as_deref(), Some("motor"));
        assert!(model_of(&plans.of(7, &stranger)).is_none());
    }
}
