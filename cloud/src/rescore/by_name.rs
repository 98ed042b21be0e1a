//! A row's features in the reference's order, looked up by name (pure).
//!
//! The events table stores each record's features by name in its own feature set's order
//! (`crate::table`); the drift sketches hold one feature per reference feature, in the
//! cloud model manifest's order. [`ByName::resolve`] maps one onto the other. Rows of a
//! file mostly share one set, so the mapping of the last set seen is kept and reused
//! while the names repeat (one comparison per name instead of a search per name).

/// Maps rows' `(name, value)` lists onto a fixed list of reference names.
#[derive(Debug, Clone)]
pub struct ByName {
    reference: Vec<String>,
    /// The names of the last row resolved, and for each reference feature its position
    /// among them.
    last_names: Vec<String>,
    positions: Vec<Option<usize>>,
}

impl ByName {
    /// A resolver onto `reference` (the names, in the sketches' order).
    pub fn new(reference: Vec<String>) -> ByName {
        let n = reference.len();
        ByName {
            reference,
            last_names: Vec::new(),
            positions: vec![None; n],
        }
    }

    /// Writes `row`'s value of each reference feature into `values` (NaN when absent) and
    /// flags the absent ones in `missing`; both hold one slot per reference feature.
    pub fn resolve(&mut self, row: &[(&str, f32)], values: &mut [f32], missing: &mut [bool]) {
        let same = self.last_names.len() == row.len()
            && self.last_names.iter().zip(row).all(|(a, (b, _))| a == b);
        if !same {
            self.last_names.clear();
            self.last_names
                .extend(row.iter().map(|(n, _)| (*n).to_owned()));
            for (p, name) in self.positions.iter_mut().zip(&self.reference) {
                *p = row.iter().position(|(n, _)| n == name);
            }
        }
        for ((p, v), m) in self.positions.iter().zip(values).zip(missing) {
            match p {
                Some(j) => {
                    *v = row[*j].1;
                    *m = false;
                }
                None => {
                    *v = f32::NAN;
                    *m = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_come_out_in_the_reference_order_whatever_the_rows_order() {
        let mut b = ByName::new(names(&["a", "b", "c"]));
        let (mut v, mut m) = (vec![0.0; 3], vec![true; 3]);
        b.resolve(&[("c", 3.0), ("a", 1.0), ("b", 2.0)], &mut v, &mut m);
        assert_eq!(v, [1.0, 2.0, 3.0]);
        assert_eq!(m, [false; 3]);
    }

    #[test]
    fn a_reference_feature_the_row_lacks_is_missing_and_extra_ones_are_ignored() {
        let mut b = ByName::new(names(&["a", "b"]));
        let (mut v, mut m) = (vec![0.0; 2], vec![false; 2]);
        b.resolve(&[("b", 2.0), ("z", 9.0)], &mut v, &mut m);
        assert!(v[0].is_nan());
        assert_eq!((v[1], m.as_slice()), (2.0, &[true, false][..]));
        // An empty row (no features) misses everything.
        b.resolve(&[], &mut v, &mut m);
        assert_eq!(m, [true, true]);
    }

    #[test]
    fn a_row_of_another_set_after_one_of_the_same_is_resolved_afresh() {
        let mut b = ByName::new(names(&["a", "b"]));
        let (mut v, mut m) = (vec![0.0; 2], vec![false; 2]);
        b.resolve(&[("a", 1.0), ("b", 2.0)], &mut v, &mut m);
        b.resolve(&[("a", 5.0), ("b", 6.0)], &mut v, &mut m);
        assert_eq!(v, [5.0, 6.0], "same names: new values");
        b.resolve(&[("b", 7.0), ("a", 8.0)], &mut v, &mut m);
        assert_eq!(v, [8.0, 7.0], "names reordered: mapping redone");
    }

    proptest! {
        #[test]
        fn resolving_is_a_lookup_by_name(
            picks in proptest::collection::vec((0usize..6, -1e3f32..1e3), 0..8)
        ) {
            let all = ["a", "b", "c", "d", "e", "f"];
            let mut row: Vec<(&str, f32)> = Vec::new();
            for (k, v) in picks {
                if !row.iter().any(|(n, _)| *n == all[k]) {
                    row.push((all[k], v));
                }
            }
            let reference = names(&["f", "a", "c"]);
            let mut b = ByName::new(reference.clone());
            let (mut v, mut m) = (vec![0.0; 3], vec![false; 3]);
            b.resolve(&row, &mut v, &mut m);
            for (i, name) in reference.iter().enumerate() {
                match row.iter().find(|(n, _)| n == name) {
                    Some((_, x)) => prop_assert!(!m[i] && v[i] == *x),
                    None => prop_assert!(m[i] && v[i].is_nan()),
                }
            }
        }
    }
}
