//! Build facts for `reflexd_build_info`: the git commit, the target triple and the cargo
//! profile, as compile-time environment variables (`REFLEXD_GIT_COMMIT`, `REFLEXD_TARGET`,
//! `REFLEXD_PROFILE`).
//!
//! The commit is `REFLEXD_GIT_COMMIT` from the environment when set (a package built from
//! a tarball), else `git rev-parse --short=12 HEAD`, else `unknown` (no git, not a clone).
//! The script reruns when the checked-out commit moves (git's `HEAD` and the branch ref it
//! names, where those are files), so a new commit does not leave a stale label.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Asks cargo to rerun this script when git's file at `name` (e.g. `HEAD`) changes; a ref
/// without a file of its own (packed) is skipped rather than rerunning every build.
fn watch_git_path(name: &str) {
    if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name]) {
        if PathBuf::from(&path).is_file() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=REFLEXD_GIT_COMMIT");
    let commit = match std::env::var("REFLEXD_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            watch_git_path("HEAD");
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch_git_path(&branch);
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=REFLEXD_GIT_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=REFLEXD_TARGET={target}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=REFLEXD_PROFILE={profile}");
}
