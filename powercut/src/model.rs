//! The filesystem as a power-cut model: pure state, no I/O (the FUSE adapter in
//! `crate::fuse` only translates requests into calls on [`Model`]).
//!
//! # What is durable
//!
//! Every inode has a *live* state (what reads, `stat` and `readdir` see: the page cache)
//! and a *durable* state (what the disk holds):
//!
//! - **File data and size** become durable only by an `fsync`/`fdatasync` of that file
//!   (both are the same here). A write, a truncate or an `fallocate` changes the live
//!   state only. `sync_file_range` never reaches a FUSE filesystem, so it persists nothing
//!   (conservative: on a real disk it writes data but neither metadata nor the disk cache).
//! - **Namespace changes** (create, mkdir, unlink, rmdir, rename) change the live entries of
//!   the directories involved; a directory's entries become durable only by an `fsync` of
//!   that directory, as in LazyFS. Each directory is persisted on its own: a rename between
//!   two directories of which only the target was fsynced leaves the file under both names
//!   after a cut, and if only the source was, under neither.
//! - **Other metadata** (mode, owner, times) is not modelled across a cut: it is kept as
//!   last set.
//!
//! A **cut** ([`Model::power_off`]) replaces every live state with the durable one, forgets
//! inodes no durable entry reaches, and then fails every operation ([`FsError::PoweredOff`])
//! until [`Model::power_on`]: nothing done after the instant of the cut can persist, even
//! by processes that have not died yet.
//!
//! # Injected fsync errors
//!
//! An [`FsyncFault`] makes matching `fsync` calls (on files or directories) return `EIO`.
//! The model then does what Linux does after a failed writeback (ext4, xfs): the dirty data
//! is **kept but never persisted**. The pages are marked clean, so reads keep returning the
//! data that is not on disk, and no later `fsync` writes it (it reports success once the
//! error has been reported). So a program that re-reads after an fsync error sees data a cut
//! will take away: exactly the hazard a journal must not trust. The file's size is
//! metadata: the next successful fsync persists it, so bytes lost past the old end read
//! back as zeros (a hole) after a cut. Dropping the pages instead
//! (reads going back to the disk's content) would hide that hazard. A failed directory
//! fsync persists nothing of the namespace now; the next successful one persists the
//! directory's entries as they are then.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number; [`ROOT`] is the mount's root directory.
pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;

/// Ranges written since the last sync are merged once there are more than this many.
const MERGE_DIRTY_AT: usize = 4096;

/// What went wrong; the FUSE adapter maps each to an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No such entry or inode (`ENOENT`).
    #[error("no such file or directory")]
    NotFound,
    /// The entry exists (`EEXIST`).
    #[error("file exists")]
    Exists,
    /// A directory was expected (`ENOTDIR`).
    #[error("not a directory")]
    NotDir,
    /// A file was expected (`EISDIR`).
    #[error("is a directory")]
    IsDir,
    /// The directory has entries (`ENOTEMPTY`).
    #[error("directory not empty")]
    NotEmpty,
    /// An injected fsync failure (`EIO`).
    #[error("injected fsync i/o error")]
    InjectedEio,
    /// The power is off: nothing works until the mount is restarted (`EIO`).
    #[error("the power is off")]
    PoweredOff,
    /// An argument this model does not support (`EINVAL`).
    #[error("unsupported operation")]
    Unsupported,
}

/// The kind of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` shows of an inode (its live state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (files; 0 for directories).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification.
    pub mtime: SystemTime,
}

/// When matching `fsync` calls fail with `EIO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncFault {
    /// Only fsyncs of paths (relative to the mount, `/`-separated) containing this match;
    /// `None`: every fsync.
    pub path_contains: Option<String>,
    /// The first `skip` matching calls succeed.
    pub skip: u64,
    /// How many matching calls fail after those (`None`: all of them).
    pub times: Option<u64>,
}

impl FsyncFault {
    /// The next fsync fails, once.
    pub fn once() -> FsyncFault {
        FsyncFault {
            path_contains: None,
            skip: 0,
            times: Some(1),
        }
    }

    /// Every fsync fails from now on.
    pub fn always() -> FsyncFault {
        FsyncFault {
            times: None,
            ..FsyncFault::once()
        }
    }

    /// Only fsyncs of paths containing `pattern` count and fail.
    pub fn on_paths_containing(mut self, pattern: &str) -> FsyncFault {
        self.path_contains = Some(pattern.to_owned());
        self
    }

    /// Starting with the `n`th matching call (1-based): the `n - 1` before succeed.
    pub fn from_call(mut self, n: u64) -> FsyncFault {
        self.skip = n.saturating_sub(1);
        self
    }

    fn matches(&self, path: &str) -> bool {
        self.path_contains
            .as_deref()
            .is_none_or(|p| path.contains(p))
    }
}

#[derive(Debug, Clone)]
struct ActiveFault {
    rule: FsyncFault,
    seen: u64,
    fired: u64,
}

/// Counters of what the model did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// fsync calls on files and directories (failed ones included).
    pub fsyncs: u64,
    /// fsync calls that failed by injection.
    pub injected_eio: u64,
    /// Cuts so far.
    pub cuts: u64,
}

/// What one cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose live data or size differed from the durable one.
    pub files_reverted: u64,
    /// Bytes written (or written and failed to persist) since their file's last sync.
    pub dirty_bytes_dropped: u64,
    /// Directories whose live entries differed from the durable ones.
    pub dirs_reverted: u64,
    /// Inodes no durable entry reached, forgotten.
    pub inodes_forgotten: u64,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Files: what reads see.
    live: Vec<u8>,
    /// Files: what the disk holds.
    durable: Vec<u8>,
    /// Files: byte ranges written since the last sync (start, end), unmerged.
    dirty: Vec<(u64, u64)>,
    /// Files: the smallest live size since the last sync (bytes at or past it that no
    /// write touched are zeros in the live data).
    min_len: u64,
    /// Files: bytes whose write failed to persist (kept readable, never written).
    unpersisted: u64,
    /// Directories: what `readdir` sees.
    live_entries: BTreeMap<OsString, Ino>,
    /// Directories: what the disk holds.
    durable_entries: BTreeMap<OsString, Ino>,
    /// Where it was last linked (for fault paths).
    parent: Ino,
    name: OsString,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: Ino, name: &OsStr) -> Node {
        Node {
            kind,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
            live: Vec::new(),
            durable: Vec::new(),
            dirty: Vec::new(),
            min_len: 0,
            unpersisted: 0,
            live_entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            parent,
            name: name.to_owned(),
        }
    }

    fn mark_dirty(&mut self, start: u64, end: u64) {
        if start < end {
            self.dirty.push((start, end));
            if self.dirty.len() > MERGE_DIRTY_AT {
                self.dirty = merge(std::mem::take(&mut self.dirty));
            }
        }
    }

    fn dirty_bytes(&self) -> u64 {
        merge(self.dirty.clone()).iter().map(|(s, e)| e - s).sum()
    }

    /// Copies what changed since the last sync into the durable data.
    fn persist(&mut self) {
        let len = self.live.len();
        let keep = (self.min_len as usize).min(self.durable.len());
        self.durable.truncate(keep);
        self.durable.resize(len, 0);
        for (s, e) in merge(std::mem::take(&mut self.dirty)) {
            let (s, e) = (s as usize, (e as usize).min(len));
            if s < e {
                self.durable[s..e].copy_from_slice(&self.live[s..e]);
            }
        }
        self.min_len = len as u64;
    }

    /// A failed sync: what changed since the last one stays readable and is never persisted.
    fn forget_dirty(&mut self) {
        self.unpersisted += self.dirty_bytes();
        self.dirty.clear();
        // A later sync keeps the durable bytes up to the current size as they are (and
        // persists the size: lost bytes past the old end become zeros).
        self.min_len = self.live.len() as u64;
    }
}

/// Sorted, merged ranges.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The whole filesystem: live and durable state of every inode, injected faults, counters.
#[derive(Debug)]
pub struct Model {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    faults: Vec<ActiveFault>,
    powered_off: bool,
    stats: Stats,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// An empty filesystem whose root directory is durable.
    pub fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::new(Kind::Dir, 0o755, 0, 0, ROOT, OsStr::new("")),
        );
        Model {
            nodes,
            next_ino: ROOT + 1,
            faults: Vec::new(),
            powered_off: false,
            stats: Stats::default(),
        }
    }

    fn on(&self) -> Result<(), FsError> {
        if self.powered_off {
            Err(FsError::PoweredOff)
        } else {
            Ok(())
        }
    }

    fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: Ino) -> Result<&Node, FsError> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            Ok(n)
        } else {
            Err(FsError::NotDir)
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        let n = self.node_mut(ino)?;
        if n.kind == Kind::File {
            Ok(n)
        } else {
            Err(FsError::IsDir)
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the power is off.
    pub fn is_powered_off(&self) -> bool {
        self.powered_off
    }

    /// Adds an fsync fault.
    pub fn inject(&mut self, rule: FsyncFault) {
        self.faults.push(ActiveFault {
            rule,
            seen: 0,
            fired: 0,
        });
    }

    /// Removes every fsync fault.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The path of `ino` relative to the root, `/`-separated, where it was last linked.
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let Some(n) = self.nodes.get(&cur) else { break };
            parts.push(n.name.to_string_lossy().into_owned());
            if parts.len() > 4096 {
                break;
            }
            cur = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: Ino) -> Result<Attr, FsError> {
        self.on()?;
        let n = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: n.kind,
            size: if n.kind == Kind::File {
                n.live.len() as u64
            } else {
                0
            },
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
        })
    }

    /// The inode `name` in directory `parent` names.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, FsError> {
        self.on()?;
        self.dir(parent)?
            .live_entries
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    /// Creates a file or directory `name` in `parent` (live only until `parent` is synced).
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, FsError> {
        self.on()?;
        if self.dir(parent)?.live_entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(kind, perm, uid, gid, parent, name));
        let p = self.node_mut(parent)?;
        p.live_entries.insert(name.to_owned(), ino);
        p.mtime = SystemTime::now();
        Ok(ino)
    }

    /// Reads up to `size` bytes at `offset` of the live data.
    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> Result<&[u8], FsError> {
        self.on()?;
        let n = self.node(ino)?;
        if n.kind != Kind::File {
            return Err(FsError::IsDir);
        }
        let len = n.live.len();
        let start = (offset as usize).min(len);
        let end = start.saturating_add(size).min(len);
        Ok(&n.live[start..end])
    }

    /// Writes `data` at `offset` (live only until the file is synced).
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        self.on()?;
        let n = self.file_mut(ino)?;
        let start = offset as usize;
        let end = start + data.len();
        if n.live.len() < end {
            n.live.resize(end, 0);
        }
        n.live[start..end].copy_from_slice(data);
        n.mark_dirty(start as u64, end as u64);
        n.mtime = SystemTime::now();
        Ok(data.len())
    }

    /// Sets the live size (truncate or extend with zeros).
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Result<(), FsError> {
        self.on()?;
        let n = self.file_mut(ino)?;
        n.live.resize(size as usize, 0);
        n.min_len = n.min_len.min(size);
        n.mtime = SystemTime::now();
        Ok(())
    }

    /// Sets permission bits.
    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), FsError> {
        self.on()?;
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    /// Sets owner and group.
    pub fn set_owner(
        &mut self,
        ino: Ino,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), FsError> {
        self.on()?;
        let n = self.node_mut(ino)?;
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        Ok(())
    }

    /// Removes the entry `name` from `parent`; `dir` says which kind it must be.
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), FsError> {
        self.on()?;
        let ino = self.lookup(parent, name)?;
        let n = self.node(ino)?;
        match (n.kind, dir) {
            (Kind::Dir, false) => return Err(FsError::IsDir),
            (Kind::File, true) => return Err(FsError::NotDir),
            (Kind::Dir, true) if !n.live_entries.is_empty() => return Err(FsError::NotEmpty),
            _ => {}
        }
        let p = self.node_mut(parent)?;
        p.live_entries.remove(name);
        p.mtime = SystemTime::now();
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing a file or empty directory
    /// there unless `no_replace`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        self.on()?;
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            let (src_kind, t) = (self.node(ino)?.kind, self.node(target)?);
            match (src_kind, t.kind) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if !t.live_entries.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        let now = SystemTime::now();
        let p = self.node_mut(parent)?;
        p.live_entries.remove(name);
        p.mtime = now;
        let np = self.node_mut(new_parent)?;
        np.live_entries.insert(new_name.to_owned(), ino);
        np.mtime = now;
        let n = self.node_mut(ino)?;
        n.parent = new_parent;
        n.name = new_name.to_owned();
        Ok(())
    }

    /// The live entries of a directory.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Ino, Kind)>, FsError> {
        self.on()?;
        let d = self.dir(ino)?;
        Ok(d.live_entries
            .iter()
            .map(|(name, &i)| {
                let kind = self.nodes.get(&i).map_or(Kind::File, |n| n.kind);
                (name.clone(), i, kind)
            })
            .collect())
    }

    /// The parent of a directory (the root is its own).
    pub fn parent(&self, ino: Ino) -> Ino {
        self.nodes.get(&ino).map_or(ROOT, |n| n.parent)
    }

    /// `fsync`/`fdatasync` of a file (its data and size become durable) or a directory (its
    /// entries become durable), unless an injected fault makes it fail (module doc).
    pub fn fsync(&mut self, ino: Ino) -> Result<(), FsError> {
        self.on()?;
        self.node(ino)?;
        self.stats.fsyncs += 1;
        let path = self.path(ino);
        let mut fail = false;
        for f in &mut self.faults {
            if f.rule.matches(&path) {
                f.seen += 1;
                if f.seen > f.rule.skip && f.rule.times.is_none_or(|t| f.fired < t) {
                    f.fired += 1;
                    fail = true;
                }
            }
        }
        let n = self.node_mut(ino)?;
        if fail {
            if n.kind == Kind::File {
                n.forget_dirty();
            }
            self.stats.injected_eio += 1;
            return Err(FsError::InjectedEio);
        }
        match n.kind {
            Kind::File => n.persist(),
            Kind::Dir => n.durable_entries = n.live_entries.clone(),
        }
        Ok(())
    }

    /// Bytes of `ino` whose writes failed to persist (readable, never on disk).
    pub fn unpersisted_bytes(&self, ino: Ino) -> u64 {
        self.nodes.get(&ino).map_or(0, |n| n.unpersisted)
    }

    /// The power cut: every live state becomes the durable one, inodes no durable entry
    /// reaches are forgotten, and every operation fails until [`Model::power_on`].
    pub fn power_off(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for n in self.nodes.values_mut() {
            match n.kind {
                Kind::File => {
                    if n.live != n.durable || !n.dirty.is_empty() {
                        report.files_reverted += 1;
                        report.dirty_bytes_dropped += n.dirty_bytes() + n.unpersisted;
                    }
                    n.live = n.durable.clone();
                    n.dirty.clear();
                    n.min_len = n.live.len() as u64;
                    n.unpersisted = 0;
                }
                Kind::Dir => {
                    if n.live_entries != n.durable_entries {
                        report.dirs_reverted += 1;
                    }
                    n.live_entries = n.durable_entries.clone();
                }
            }
        }
        // Keep what the root reaches; each reached inode is linked where it was found.
        let mut reached: HashMap<Ino, (Ino, OsString)> = HashMap::new();
        reached.insert(ROOT, (ROOT, OsString::new()));
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            let Some(node) = self.nodes.get(&d) else {
                continue;
            };
            for (name, &child) in &node.live_entries {
                if !reached.contains_key(&child) && self.nodes.contains_key(&child) {
                    reached.insert(child, (d, name.clone()));
                    stack.push(child);
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains_key(ino));
        report.inodes_forgotten = (before - self.nodes.len()) as u64;
        for (ino, (parent, name)) in reached {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if ino != ROOT {
                    n.parent = parent;
                    n.name = name;
                }
            }
        }
        // Entries naming forgotten inodes cannot exist: every entry's target was reached.
        self.powered_off = true;
        self.stats.cuts += 1;
        report
    }

    /// Power back on (after the mount was restarted over the durable state).
    pub fn power_on(&mut self) {
        self.powered_off = false;
    }

    /// [`Model::power_off`] then [`Model::power_on`].
    pub fn cut(&mut self) -> CutReport {
        let r = self.power_off();
        self.power_on();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(m: &mut Model, parent: Ino, name: &str) -> Ino {
        m.create(parent, OsStr::new(name), Kind::File, 0o644, 0, 0)
            .unwrap()
    }

    fn content(m: &Model, parent: Ino, name: &str) -> Option<Vec<u8>> {
        let ino = m.lookup(parent, OsStr::new(name)).ok()?;
        Some(m.read(ino, 0, usize::MAX).unwrap().to_vec())
    }

    #[test]
    fn a_write_without_fsync_is_gone_after_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.fsync(ROOT).unwrap();
        m.write(f, 0, b"hello").unwrap();
        assert_eq!(
            content(&m, ROOT, "a").unwrap(),
            b"hello",
            "reads see dirty data"
        );
        let r = m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"");
        assert_eq!(r.dirty_bytes_dropped, 5);
        assert_eq!(r.files_reverted, 1);
    }

    #[test]
    fn a_write_with_fsync_survives_a_cut_and_later_writes_do_not() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.write(f, 0, b"hello").unwrap();
        m.fsync(f).unwrap();
        m.fsync(ROOT).unwrap();
        m.write(f, 2, b"XXXXXX").unwrap();
        m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"hello");
    }

    #[test]
    fn a_new_file_whose_directory_was_not_fsynced_is_gone_even_if_its_data_was() {
        let mut m = Model::new();
        let d = m
            .create(ROOT, OsStr::new("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        m.fsync(ROOT).unwrap();
        let f = file(&mut m, d, "a");
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        let r = m.cut();
        assert_eq!(content(&m, d, "a"), None);
        assert_eq!(r.inodes_forgotten, 1);
        assert_eq!(r.dirs_reverted, 1);
    }

    #[test]
    fn a_rename_without_a_directory_fsync_is_undone_by_a_cut() {
        let mut m = Model::new();
        let tmp = file(&mut m, ROOT, "tmp");
        m.write(tmp, 0, b"new").unwrap();
        m.fsync(tmp).unwrap();
        let old = file(&mut m, ROOT, "current");
        m.write(old, 0, b"old").unwrap();
        m.fsync(old).unwrap();
        m.fsync(ROOT).unwrap();
        m.rename(ROOT, OsStr::new("tmp"), ROOT, OsStr::new("current"), false)
            .unwrap();
        assert_eq!(content(&m, ROOT, "current").unwrap(), b"new");
        m.cut();
        assert_eq!(content(&m, ROOT, "current").unwrap(), b"old");
        assert_eq!(content(&m, ROOT, "tmp").unwrap(), b"new");
        // The same rename made durable by fsyncing the directory.
        m.rename(ROOT, OsStr::new("tmp"), ROOT, OsStr::new("current"), false)
            .unwrap();
        m.fsync(ROOT).unwrap();
        m.cut();
        assert_eq!(content(&m, ROOT, "current").unwrap(), b"new");
        assert_eq!(content(&m, ROOT, "tmp"), None);
    }

    #[test]
    fn an_unlink_without_a_directory_fsync_is_undone_by_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.write(f, 0, b"x").unwrap();
        m.fsync(f).unwrap();
        m.fsync(ROOT).unwrap();
        m.remove(ROOT, OsStr::new("a"), false).unwrap();
        assert_eq!(content(&m, ROOT, "a"), None);
        m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"x");
    }

    #[test]
    fn a_truncate_is_durable_only_with_the_file_fsync() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.write(f, 0, b"0123456789").unwrap();
        m.fsync(f).unwrap();
        m.fsync(ROOT).unwrap();
        m.set_size(f, 3).unwrap();
        m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"0123456789");
        // Shrink then grow again: the bytes in between are zeros, durably.
        m.set_size(f, 3).unwrap();
        m.write(f, 6, b"ab").unwrap();
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"012\0\0\0ab");
    }

    #[test]
    fn a_failed_fsync_keeps_the_data_readable_but_never_persists_it() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.write(f, 0, b"durable").unwrap();
        m.fsync(f).unwrap();
        m.fsync(ROOT).unwrap();
        m.write(f, 7, b"-lost").unwrap();
        m.inject(FsyncFault::once());
        assert_eq!(m.fsync(f), Err(FsError::InjectedEio));
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"durable-lost");
        assert_eq!(m.unpersisted_bytes(f), 5);
        // The next fsync succeeds (the error was reported) and persists only what came after.
        m.write(f, 12, b"+new").unwrap();
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(content(&m, ROOT, "a").unwrap(), b"durable\0\0\0\0\0+new");
        assert_eq!(m.stats().injected_eio, 1);
    }

    #[test]
    fn fsync_faults_match_paths_and_start_at_the_nth_call() {
        let mut m = Model::new();
        let d = m
            .create(ROOT, OsStr::new("journal"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let db = file(&mut m, d, "db");
        let other = file(&mut m, ROOT, "other");
        m.inject(
            FsyncFault::always()
                .on_paths_containing("journal/db")
                .from_call(3),
        );
        for _ in 0..2 {
            m.fsync(db).unwrap();
            m.fsync(other).unwrap();
        }
        assert_eq!(m.fsync(other), Ok(()));
        assert_eq!(m.fsync(d), Ok(()), "journal/ itself does not match");
        assert_eq!(m.fsync(db), Err(FsError::InjectedEio));
        assert_eq!(m.fsync(db), Err(FsError::InjectedEio));
        m.clear_faults();
        assert_eq!(m.fsync(db), Ok(()));
    }

    #[test]
    fn nothing_works_between_power_off_and_power_on() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a");
        m.power_off();
        assert_eq!(m.write(f, 0, b"late"), Err(FsError::PoweredOff));
        assert_eq!(m.fsync(ROOT), Err(FsError::PoweredOff));
        m.power_on();
        assert_eq!(m.lookup(ROOT, OsStr::new("a")), Err(FsError::NotFound));
    }

    #[test]
    fn a_rename_across_directories_persists_each_directory_on_its_own() {
        let mut m = Model::new();
        let a = m
            .create(ROOT, OsStr::new("a"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let b = m
            .create(ROOT, OsStr::new("b"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let f = file(&mut m, a, "f");
        m.write(f, 0, b"1").unwrap();
        m.fsync(f).unwrap();
        m.fsync(a).unwrap();
        m.fsync(ROOT).unwrap();
        m.rename(a, OsStr::new("f"), b, OsStr::new("f"), false)
            .unwrap();
        m.fsync(b).unwrap();
        m.cut();
        assert_eq!(content(&m, a, "f").unwrap(), b"1");
        assert_eq!(content(&m, b, "f").unwrap(), b"1");
    }
}
