//! `reflex-benches`: benchmarks only; see `benches/` and README.md for how to run them.
