//! The pure part of compaction (no I/O): which files of a day a reader takes
//! ([`resolve_day`]), which of them a compaction merges ([`plan_partition`]), and the id
//! of a compaction ([`compaction_id`]). The protocol these serve is in the [parent
//! module's doc](super).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::CompactionMarker;
use crate::layout::{self, Day};
use crate::storage::Listed;

/// The id of the compaction of `batches` (sorted, as a set is) in the partition `(day,
/// device)`: the SHA-256 of the partition and the batch ids, 64 hex digits. The same
/// merge planned again gets the same id, so the same file name and marker.
pub fn compaction_id<'a>(
    day: Day,
    device: &str,
    batches: impl IntoIterator<Item = &'a String>,
) -> String {
    let mut h = Sha256::new();
    h.update(format!("{day}/{device}\n"));
    for b in batches {
        h.update(b.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A file a reader takes: an uncompacted batch's file (one batch) or a compacted file
/// (the batches of its marker), with the batches whose rows of this partition it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The file.
    pub file: Listed,
    /// Its batches, sorted.
    pub batches: Vec<String>,
}

/// A file no reader takes any more: its rows are in the compacted files of `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The file.
    pub file: Listed,
    /// The ids of the taken compactions that hold its rows.
    pub by: Vec<String>,
}

/// One partition `(day, device)` as a reader resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partition {
    /// Device id.
    pub device: String,
    /// The files to read, by path: every committed batch's rows of this partition are in
    /// exactly one of them.
    pub units: Vec<Unit>,
    /// Files whose rows are all in taken compacted files (deletable once those markers are
    /// old enough).
    pub superseded: Vec<Superseded>,
    /// Compacted files without a marker: a compaction that was killed before its commit,
    /// or one still running (deletable once old enough).
    pub orphans: Vec<Listed>,
    /// Compactions not taken because they overlap a taken one without being contained in
    /// it (only two compactions run at once make them): their files are left alone.
    pub conflicting: Vec<String>,
}

/// Resolves one day: `listed` is the day's event files (`events/date=…/`, listed *after*
/// `markers`, the day's compaction markers, which were listed after `committed`, the
/// batch markers). Per device, a compaction is taken when its file is listed, greedily by
/// the number of batches it covers (then by id), skipping any that shares a batch with one
/// taken; then every committed batch's own file whose batch no taken compaction covers.
/// Partitions come sorted by device, units by path.
pub fn resolve_day<'a>(
    listed: &[Listed],
    committed: &HashSet<String>,
    markers: impl IntoIterator<Item = &'a CompactionMarker>,
) -> Vec<Partition> {
    #[derive(Default)]
    struct Files<'l> {
        originals: Vec<(&'l str, &'l Listed)>,
        compacted: BTreeMap<&'l str, &'l Listed>,
        markers: Vec<&'l CompactionMarker>,
    }
    let mut by_device: BTreeMap<&str, Files> = BTreeMap::new();
    for f in listed {
        let Some(device) = layout::device_of_event_file(&f.path) else {
            continue;
        };
        if let Some(b) = layout::batch_of_event_file(&f.path) {
            by_device.entry(device).or_default().originals.push((b, f));
        } else if let Some(id) = layout::compaction_of_event_file(&f.path) {
            by_device.entry(device).or_default().compacted.insert(id, f);
        }
    }
    for m in markers {
        by_device
            .entry(m.device.as_str())
            .or_default()
            .markers
            .push(m);
    }
    let mut out = Vec::with_capacity(by_device.len());
    for (device, files) in by_device {
        let mut candidates: Vec<&CompactionMarker> = files
            .markers
            .iter()
            .copied()
            .filter(|m| files.compacted.contains_key(m.id.as_str()))
            .collect();
        candidates.sort_by(|a, b| b.batches.len().cmp(&a.batches.len()).then(a.id.cmp(&b.id)));
        let mut covered: HashMap<&str, &str> = HashMap::new();
        let mut p = Partition {
            device: device.to_owned(),
            ..Partition::default()
        };
        let mut taken: HashSet<&str> = HashSet::new();
        for m in candidates {
            if m.batches.iter().any(|b| covered.contains_key(b.as_str())) {
                continue;
            }
            covered.extend(m.batches.iter().map(|b| (b.as_str(), m.id.as_str())));
            taken.insert(m.id.as_str());
            p.units.push(Unit {
                file: files.compacted[m.id.as_str()].clone(),
                batches: m.batches.clone(),
            });
        }
        for (b, f) in &files.originals {
            match covered.get(b) {
                Some(by) => p.superseded.push(Superseded {
                    file: (*f).clone(),
                    by: vec![(*by).to_owned()],
                }),
                None if committed.contains(*b) => p.units.push(Unit {
                    file: (*f).clone(),
                    batches: vec![(*b).to_owned()],
                }),
                // Not committed: an ingest under way or killed; its retry commits it.
                None => {}
            }
        }
        let markers: HashMap<&str, &CompactionMarker> =
            files.markers.iter().map(|m| (m.id.as_str(), *m)).collect();
        for (id, f) in &files.compacted {
            if taken.contains(id) {
                continue;
            }
            match markers.get(id) {
                None => p.orphans.push((*f).clone()),
                Some(m) => {
                    let by: Option<BTreeSet<&str>> = m
                        .batches
                        .iter()
                        .map(|b| covered.get(b.as_str()).copied())
                        .collect();
                    match by {
                        Some(by) => p.superseded.push(Superseded {
                            file: (*f).clone(),
                            by: by.into_iter().map(str::to_owned).collect(),
                        }),
                        None => p.conflicting.push((*id).to_owned()),
                    }
                }
            }
        }
        p.units.sort_by(|a, b| a.file.cmp(&b.file));
        p.superseded.sort_by(|a, b| a.file.cmp(&b.file));
        out.push(p);
    }
    out
}

/// The merges of one partition's units: when at least `min_files` (and at least 2) of them
/// are smaller than `target_bytes`, those small ones, in path order, are cut into runs of
/// at most `target_bytes` together; each run of two or more files is one merge. Files of
/// `target_bytes` or more are left as they are, and so is a run of one.
pub fn plan_partition(units: &[Unit], min_files: usize, target_bytes: u64) -> Vec<Vec<Unit>> {
    let mut small: Vec<&Unit> = units
        .iter()
        .filter(|u| u.file.size < target_bytes)
        .collect();
    if small.len() < min_files.max(2) {
        return Vec::new();
    }
    small.sort_by(|a, b| a.file.cmp(&b.file));
    let mut groups = Vec::new();
    let mut run: Vec<Unit> = Vec::new();
    let mut run_bytes = 0u64;
    for u in small {
        if !run.is_empty() && run_bytes.saturating_add(u.file.size) > target_bytes {
            if run.len() >= 2 {
                groups.push(std::mem::take(&mut run));
            }
            run.clear();
            run_bytes = 0;
        }
        run_bytes = run_bytes.saturating_add(u.file.size);
        run.push(u.clone());
    }
    if run.len() >= 2 {
        groups.push(run);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day() -> Day {
        Day::from_days(20_454)
    }

    fn batch(n: u32) -> String {
        format!("{n:064x}")
    }

    fn unit(path: &str, size: u64) -> Unit {
        Unit {
            file: Listed {
                path: path.into(),
                size,
            },
            batches: vec![path.into()],
        }
    }

    /// A marker of `batches` in `device`'s partition of [`day`].
    fn marker(device: &str, batches: &[String]) -> CompactionMarker {
        let batches: Vec<String> = batches
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let id = compaction_id(day(), device, &batches);
        CompactionMarker {
            file: layout::compacted_file(day(), device, &id),
            date: day().to_string(),
            device: device.into(),
            batches,
            inputs: Vec::new(),
            rows: 0,
            bytes: 0,
            id,
        }
    }

    fn original(device: &str, b: &str) -> Listed {
        Listed {
            path: layout::event_file(day(), device, b),
            size: 100,
        }
    }

    #[test]
    fn the_id_names_the_partition_and_the_batch_set() {
        let a = compaction_id(day(), "d1", &[batch(1), batch(2)]);
        assert_eq!(a.len(), 64);
        assert!(layout::valid_batch_id(&a));
        assert_eq!(a, compaction_id(day(), "d1", &[batch(1), batch(2)]));
        assert_ne!(a, compaction_id(day(), "d2", &[batch(1), batch(2)]));
        assert_ne!(a, compaction_id(day(), "d1", &[batch(1)]));
        assert_ne!(
            a,
            compaction_id(Day::from_days(1), "d1", &[batch(1), batch(2)])
        );
    }

    #[test]
    fn a_compacted_file_replaces_the_files_of_its_batches_only_once_its_marker_exists() {
        let (b1, b2, b3) = (batch(1), batch(2), batch(3));
        let committed: HashSet<String> = [b1.clone(), b2.clone(), b3.clone()].into();
        let m = marker("d", &[b1.clone(), b2.clone()]);
        let compacted = Listed {
            path: m.file.clone(),
            size: 150,
        };
        let files = vec![
            original("d", &b1),
            original("d", &b2),
            original("d", &b3),
            compacted.clone(),
        ];
        // File written, no marker: the originals are read, the file is an orphan.
        let p = &resolve_day(&files, &committed, [])[0];
        assert_eq!(p.units.len(), 3);
        assert_eq!(p.orphans, vec![compacted.clone()]);
        // Marker: the compacted file and the third batch's file.
        let p = &resolve_day(&files, &committed, [&m])[0];
        let read: Vec<&str> = p.units.iter().map(|u| u.file.path.as_str()).collect();
        assert_eq!(read, [original("d", &b3).path.as_str(), m.file.as_str()]);
        assert_eq!(p.superseded.len(), 2);
        assert!(p.superseded.iter().all(|s| s.by == [m.id.clone()]));
        // Marker but the file not listed (a reader's listing of events before it): originals.
        let p = &resolve_day(&files[..3], &committed, [&m])[0];
        assert_eq!(p.units.len(), 3);
        assert!(p.superseded.is_empty());
    }

    #[test]
    fn a_second_round_supersedes_the_first_compacted_file() {
        let bs: Vec<String> = (1..=4).map(batch).collect();
        let committed: HashSet<String> = bs.iter().cloned().collect();
        let first = marker("d", &bs[..2]);
        let second = marker("d", &bs);
        let mut files: Vec<Listed> = bs.iter().map(|b| original("d", b)).collect();
        for m in [&first, &second] {
            files.push(Listed {
                path: m.file.clone(),
                size: 300,
            });
        }
        let p = &resolve_day(&files, &committed, [&first, &second])[0];
        assert_eq!(p.units.len(), 1);
        assert_eq!(p.units[0].batches, bs);
        assert_eq!(
            p.superseded.len(),
            5,
            "four originals and the first compacted file"
        );
        assert!(p.conflicting.is_empty() && p.orphans.is_empty());
    }

    #[test]
    fn overlapping_compactions_are_never_both_read() {
        let bs: Vec<String> = (1..=3).map(batch).collect();
        let committed: HashSet<String> = bs.iter().cloned().collect();
        let x = marker("d", &bs[..2]);
        let y = marker("d", &bs[1..]);
        let mut files: Vec<Listed> = bs.iter().map(|b| original("d", b)).collect();
        for m in [&x, &y] {
            files.push(Listed {
                path: m.file.clone(),
                size: 200,
            });
        }
        let p = &resolve_day(&files, &committed, [&x, &y])[0];
        let mut read: Vec<&String> = p.units.iter().flat_map(|u| &u.batches).collect();
        read.sort();
        assert_eq!(read, bs.iter().collect::<Vec<_>>(), "each batch once");
        assert_eq!(p.conflicting.len(), 1);
    }

    #[test]
    fn uncommitted_files_are_neither_read_nor_deleted() {
        let files = vec![original("d", &batch(9))];
        let p = &resolve_day(&files, &HashSet::new(), [])[0];
        assert!(p.units.is_empty() && p.superseded.is_empty() && p.orphans.is_empty());
    }

    #[test]
    fn a_plan_merges_only_small_files_in_runs_up_to_the_target() {
        let units = vec![
            unit("a", 40),
            unit("b", 40),
            unit("c", 40),
            unit("d", 500),
            unit("e", 10),
        ];
        let groups = plan_partition(&units, 2, 100);
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|u| u.file.path.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["c", "e"]]);
        assert!(
            plan_partition(&units, 5, 100).is_empty(),
            "4 small files < 5"
        );
        assert!(
            plan_partition(&units[..1], 1, 100).is_empty(),
            "one file: nothing to merge"
        );
    }

    proptest! {
        #[test]
        fn plans_are_disjoint_bounded_and_independent_of_listing_order(
            sizes in proptest::collection::vec(1u64..200, 0..40),
            target in 1u64..400,
            min_files in 0usize..6,
            rotate in 0usize..40,
        ) {
            let units: Vec<Unit> = sizes.iter().enumerate().map(|(i, s)| unit(&format!("f{i:03}"), *s)).collect();
            let groups = plan_partition(&units, min_files, target);
            let mut seen = HashSet::new();
            for g in &groups {
                prop_assert!(g.len() >= 2);
                prop_assert!(g.iter().map(|u| u.file.size).sum::<u64>() <= target);
                for u in g {
                    prop_assert!(u.file.size < target);
                    prop_assert!(seen.insert(u.file.path.clone()), "a file in two merges");
                }
            }
            let small = units.iter().filter(|u| u.file.size < target).count();
            if small < min_files.max(2) {
                prop_assert!(groups.is_empty());
            }
            let mut shuffled = units.clone();
            if !shuffled.is_empty() {
                let k = rotate % shuffled.len();
                shuffled.rotate_left(k);
            }
            prop_assert_eq!(plan_partition(&shuffled, min_files, target), groups);
        }

        /// The protocol run step by step on a model of the store, killed anywhere: after
        /// every step a reader reads each committed batch exactly once.
        #[test]
        fn every_committed_batch_is_read_exactly_once_through_rounds_and_kills(
            steps in proptest::collection::vec((0u8..4, 0u8..8, any::<bool>()), 1..60),
            target in 150u64..2000,
        ) {
            let devices = ["d1", "d2"];
            let mut files: BTreeMap<String, Listed> = BTreeMap::new();
            let mut committed: HashSet<String> = HashSet::new();
            let mut markers: Vec<CompactionMarker> = Vec::new();
            let mut next = 0u32;
            let check = |files: &BTreeMap<String, Listed>, committed: &HashSet<String>, markers: &[CompactionMarker]| -> Result<Vec<Partition>, TestCaseError> {
                let listed: Vec<Listed> = files.values().cloned().collect();
                let parts = resolve_day(&listed, committed, markers);
                for d in devices {
                    let mut read: Vec<String> = parts.iter().filter(|p| p.device == d).flat_map(|p| p.units.iter().flat_map(|u| u.batches.clone())).collect();
                    read.sort();
                    let mut want: Vec<String> = committed.iter().cloned().collect();
                    want.sort();
                    prop_assert_eq!(read, want, "device {}", d);
                }
                Ok(parts)
            };
            for (op, arg, kill) in steps {
                match op {
                    // Ingest one batch (a file per device), killed before its marker or not.
                    0 | 1 => {
                        next += 1;
                        let b = batch(next);
                        for d in devices {
                            let f = original(d, &b);
                            files.insert(f.path.clone(), Listed { size: 10 + u64::from(arg) * 20, ..f });
                        }
                        if !kill {
                            committed.insert(b);
                        }
                    }
                    // A compaction run: write, commit, delete; killed after `arg` steps.
                    _ => {
                        let parts = check(&files, &committed, &markers)?;
                        let mut budget = if kill { u32::from(arg) } else { u32::MAX };
                        let mut step = || { let go = budget > 0; budget = budget.saturating_sub(1); go };
                        'run: for p in &parts {
                            for g in plan_partition(&p.units, 2, target) {
                                let batches: Vec<String> = g.iter().flat_map(|u| u.batches.clone()).collect::<BTreeSet<_>>().into_iter().collect();
                                let m = marker(&p.device, &batches);
                                if !step() { break 'run; }
                                files.insert(m.file.clone(), Listed { path: m.file.clone(), size: g.iter().map(|u| u.file.size).sum() });
                                check(&files, &committed, &markers)?;
                                if !step() { break 'run; }
                                if !markers.iter().any(|x| x.id == m.id) {
                                    markers.push(m);
                                }
                                check(&files, &committed, &markers)?;
                            }
                        }
                        // Deletion of what is superseded (and of orphans, as with no grace).
                        let parts = check(&files, &committed, &markers)?;
                        for p in parts {
                            for s in p.superseded {
                                if !step() { break; }
                                files.remove(&s.file.path);
                                check(&files, &committed, &markers)?;
                            }
                            for o in p.orphans {
                                if !step() { break; }
                                files.remove(&o.path);
                                check(&files, &committed, &markers)?;
                            }
                            prop_assert!(p.conflicting.is_empty(), "one run at a time never conflicts");
                        }
                    }
                }
                check(&files, &committed, &markers)?;
            }
        }
    }
}
