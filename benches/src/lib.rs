//! `reflex-benches`: benchmarks only; how to run them, and their results: `benches/README.md`.
//! The library holds what the `reflex-bench` harness measures with besides the fleet.

// `unsafe` only in `stall` (sched_setscheduler), which allows it for one call.
#![deny(unsafe_code)]

pub mod stall;
