//! `reflex-benches`: benchmarks only; see `benches/` and README.md for how to run them.
//! The library holds what the `reflex-bench` harness measures with besides the fleet.

// `unsafe` only in `stall` (sched_setscheduler), which allows it for one call.
#![deny(unsafe_code)]

pub mod stall;
