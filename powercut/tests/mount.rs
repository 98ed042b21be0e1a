//! The harness's semantics through a real FUSE mount and std::fs: what a cut keeps and
//! drops, directory fsync, and injected fsync errors. Needs root and /dev/fuse.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use reflex_powercut::{FsyncFault, PowerCutMount};

fn mounted() -> (tempfile::TempDir, PowerCutMount) {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = PowerCutMount::mount(dir.path()).expect("mounting the power-cut filesystem");
    (dir, m)
}

fn sync_dir(p: &Path) {
    File::open(p).and_then(|d| d.sync_all()).expect("fsync dir");
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_but_was_readable_before() {
    let (_d, mut m) = mounted();
    let f = m.path().join("a");
    File::create(&f).unwrap();
    sync_dir(m.path());
    fs::write(&f, b"volatile").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"volatile");
    let report = m.cut().unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"");
    assert!(report.dirty_bytes_dropped >= 8, "{report:?}");
}

#[test]
fn a_write_with_fsync_and_a_directory_fsync_survives_a_cut() {
    let (_d, mut m) = mounted();
    let f = m.path().join("a");
    let mut file = File::create(&f).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();
    drop(file);
    sync_dir(m.path());
    m.cut().unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"durable");
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_is_gone_after_a_cut() {
    let (_d, mut m) = mounted();
    let f = m.path().join("a");
    let mut file = File::create(&f).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_data().unwrap();
    drop(file);
    m.cut().unwrap();
    assert_eq!(fs::read(&f).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone_by_a_cut() {
    let (_d, mut m) = mounted();
    let (tmp, cur) = (m.path().join("tmp"), m.path().join("current"));
    for (p, data) in [(&cur, b"old"), (&tmp, b"new")] {
        let mut f = File::create(p).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(m.path());
    fs::rename(&tmp, &cur).unwrap();
    assert_eq!(fs::read(&cur).unwrap(), b"new");
    m.cut().unwrap();
    assert_eq!(fs::read(&cur).unwrap(), b"old");
    fs::rename(&tmp, &cur).unwrap();
    sync_dir(m.path());
    m.cut().unwrap();
    assert_eq!(fs::read(&cur).unwrap(), b"new");
    assert!(!tmp.exists());
}

#[test]
fn an_injected_fsync_error_reaches_the_caller_and_its_data_never_persists() {
    let (_d, mut m) = mounted();
    let f = m.path().join("a");
    let mut file = File::create(&f).unwrap();
    file.write_all(b"kept").unwrap();
    file.sync_all().unwrap();
    sync_dir(m.path());
    file.write_all(b"+lost").unwrap();
    m.inject(FsyncFault::once().on_paths_containing("a"));
    let err = file.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    // Still readable, as from the page cache after a failed writeback.
    assert_eq!(fs::read(&f).unwrap(), b"kept+lost");
    // The error was reported once; the next fsync succeeds and persists none of the lost
    // bytes, only the file's size: they read back as a hole of zeros.
    file.sync_all().unwrap();
    drop(file);
    m.cut().unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"kept\0\0\0\0\0");
    assert_eq!(m.stats().injected_eio, 1);
}

#[test]
fn after_power_off_every_operation_fails_and_nothing_more_persists() {
    let (_d, mut m) = mounted();
    let f = m.path().join("a");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&f)
        .unwrap();
    sync_dir(m.path());
    m.power_off();
    assert!(file
        .write_all(b"late")
        .and_then(|()| file.sync_all())
        .is_err());
    drop(file);
    m.power_on().unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"");
}

#[test]
fn the_mount_is_gone_when_the_harness_drops_even_with_a_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let m = PowerCutMount::mount(dir.path()).unwrap();
    let held = File::create(dir.path().join("held")).unwrap();
    drop(m);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.path().display().to_string()),
        "still mounted: {mounts}"
    );
    drop(held);
}
