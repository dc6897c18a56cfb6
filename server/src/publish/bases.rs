//! Which earlier releases a new release gets a data diff (and a manifest diff) from:
//! a set of distances, counted in positions of the channel head's release list
//! (1 = the release current before this publish).
//!
//! The default is a skip list, `1,2,3,5,8,10`: an agent k releases behind, for every k
//! up to 10, either has a diff of its own (k in the set) or reaches the new release in
//! two hops through a release the head lists, each hop a diff some manifest lists
//! (4 = 1+3, 6 = 1+5, 7 = 2+5, 9 = 1+8; FORMAT.md §8). Two hops cost more than one
//! diff of the same distance (measured on the 15 esbuild releases 0.20.0..0.24.2 with a
//! diff from every distance: 1.4-1.5x at worst between small releases, whose changes
//! overlap and are paid twice), so the distances an agent most likely lags by, and the
//! farthest, get their own diff; 3 and 10 are in the set because two hops there cost
//! up to 1.29x the direct bsdiff (3 = 1+2) and up to 1.18x the direct bsdiff and 1.26x
//! `zstd -19 --long=31` of the new release (10 = 2+8, across a release that rewrote
//! most of the binary), where a diff of their own costs 0.83-0.87x the bsdiff.
//! Each distance costs one diff's time at publish, the same per base as before.
//! `--diff-depth N` keeps its meaning: the last N releases.

use std::fmt;
use std::str::FromStr;

use ferry_format::manifest::MAX_DIFFS;

/// The default distances: every distance 1..=10 is one of them or a sum of two.
pub const DEFAULT_DIFF_BASES: &[usize] = &[1, 2, 3, 5, 8, 10];
/// The largest distance a base may have: a head lists at most 1024 releases.
pub const MAX_DISTANCE: usize = 1023;

/// Distances of the diff bases, strictly ascending, each in `1..=MAX_DISTANCE`, at most
/// [`MAX_DIFFS`] of them. Empty: no diffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffBases(Vec<usize>);

impl DiffBases {
    /// Sorts and checks `distances`.
    pub fn new(mut distances: Vec<usize>) -> Result<DiffBases, String> {
        distances.sort_unstable();
        distances.dedup();
        if let Some(bad) = distances.iter().find(|&&d| d == 0 || d > MAX_DISTANCE) {
            return Err(format!(
                "diff base distance {bad} is not in 1..={MAX_DISTANCE}"
            ));
        }
        if distances.len() > MAX_DIFFS {
            return Err(format!("at most {MAX_DIFFS} diff bases"));
        }
        Ok(DiffBases(distances))
    }

    /// The last `n` releases (`--diff-depth N`); 0: none.
    pub fn depth(n: usize) -> Result<DiffBases, String> {
        DiffBases::new((1..=n).collect())
    }

    pub fn distances(&self) -> &[usize] {
        &self.0
    }

    pub fn contains(&self, distance: usize) -> bool {
        self.0.binary_search(&distance).is_ok()
    }

    /// The farthest base (0 when there is none).
    pub fn reach(&self) -> usize {
        self.0.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The distances whose manifests publish reads: the bases and, after each, the
    /// `held` releases an agent on it may still hold (their chunk ids stay in skeleton
    /// manifest diffs, FORMAT.md §3.7). Ascending.
    pub fn with_held(&self, held: usize) -> Vec<usize> {
        let mut all: Vec<usize> = self.0.iter().flat_map(|&d| d..=d + held).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Default for DiffBases {
    fn default() -> Self {
        DiffBases(DEFAULT_DIFF_BASES.to_vec())
    }
}

impl FromStr for DiffBases {
    type Err = String;

    /// `1,2,5,8`; `none` (or an empty string) for no diffs.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(DiffBases(Vec::new()));
        }
        let distances = s
            .split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    format!("{p:?} is not a distance (a release count, 1..={MAX_DISTANCE})")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        DiffBases::new(distances)
    }
}

impl fmt::Display for DiffBases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every distance 1..=10 is a base or the sum of two: what an agent needs to reach
    /// the new release in at most two hops from a static host.
    #[test]
    fn the_default_reaches_every_distance_up_to_ten_in_two_hops() {
        let b = DiffBases::default();
        for d in 1..=10 {
            let one = b.contains(d);
            let two = b.distances().iter().any(|&k| k < d && b.contains(d - k));
            assert!(one || two, "distance {d}");
        }
        assert_eq!(b.to_string(), "1,2,3,5,8,10");
        assert_eq!(b.reach(), 10);
    }

    #[test]
    fn lists_parse_sorted_and_bad_ones_are_refused() {
        assert_eq!(
            "10,8,1,5,3,2".parse::<DiffBases>().unwrap(),
            DiffBases::default()
        );
        assert_eq!(
            "1,2,5,8".parse::<DiffBases>().unwrap().to_string(),
            "1,2,5,8"
        );
        assert!("none".parse::<DiffBases>().unwrap().is_empty());
        assert!("0,1".parse::<DiffBases>().is_err());
        assert!("1,x".parse::<DiffBases>().is_err());
        assert!("1024".parse::<DiffBases>().is_err());
        let many: Vec<String> = (1..=17).map(|d| d.to_string()).collect();
        assert!(many.join(",").parse::<DiffBases>().is_err());
        assert_eq!(DiffBases::depth(3).unwrap().distances(), &[1, 2, 3]);
        assert!(DiffBases::depth(0).unwrap().is_empty());
    }

    #[test]
    fn held_releases_follow_each_base() {
        let b = DiffBases::new(vec![1, 5]).unwrap();
        assert_eq!(b.with_held(3), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            DiffBases::depth(3).unwrap().with_held(3),
            vec![1, 2, 3, 4, 5, 6]
        );
    }
}
