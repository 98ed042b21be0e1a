//! Records when reflex-cloud was built (`REFLEX_CLOUD_BUILD_UNIX_S`): the ingest takes a record
//! stamped before it as a board clock that is wrong (see `reflex_cloud::clock`).
//! `SOURCE_DATE_EPOCH`, when set (reproducible builds), is the build date.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(now);
    println!("cargo:rustc-env=REFLEX_CLOUD_BUILD_UNIX_S={built}");
}
