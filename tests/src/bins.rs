//! The workspace's binaries, for tests that run them as real processes.
//!
//! `CARGO_BIN_EXE_<name>` exists only for a package's own binaries, so a test in this crate
//! finds `reflexd`, `reflex-sim` and `reflex-cloud` next to its own executable instead:
//! cargo puts test executables in `target/<profile>/deps/` and binaries in
//! `target/<profile>/`. `cargo test --workspace` builds every binary of every package that
//! has integration tests (daemon, firmware-sim and cloud all do) before it runs any test, so
//! they are there; with `cargo test -p reflex-tests` they must have been built before
//! (`cargo build -p reflexd -p reflex-sim -p reflex-cloud`). A missing binary fails the test
//! with that advice rather than letting it pass without the process it needs.

use std::path::{Path, PathBuf};

/// `target/<profile>/`: the directory above the running test executable's `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

/// The binary `name` of package `package`, built in the same target directory and profile
/// as the running test; panics with how to build it when it is missing.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let dir = target_dir();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        is_executable(&path),
        "`{name}` is not built in {}: run `cargo test --workspace` (which builds every \
         package's binaries before the tests run) or build it first with \
         `cargo build -p {package}` (same profile and CARGO_TARGET_DIR as this test)",
        dir.display()
    );
    path
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The edge daemon (package `reflexd`).
pub fn reflexd() -> PathBuf {
    workspace_bin("reflexd", "reflexd")
}

/// The simulated fleet (package `reflex-sim`).
pub fn reflex_sim() -> PathBuf {
    workspace_bin("reflex-sim", "reflex-sim")
}

/// The cloud ingest and rescore job (package `reflex-cloud`).
pub fn reflex_cloud() -> PathBuf {
    workspace_bin("reflex-cloud", "reflex-cloud")
}
