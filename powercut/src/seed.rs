//! A reproducible random source for choosing cut moments in tests: xorshift64*, seeded
//! from an environment variable (to replay a run) or the clock, and printed either way.

use std::time::{SystemTime, UNIX_EPOCH};

/// xorshift64*: the next value of `state`.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The seed in the environment variable `var`, else one from the clock; printed with
/// `test`'s name so that a failing run can be replayed.
pub fn seed(var: &str, test: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{test}: {var}={seed}");
    seed
}
