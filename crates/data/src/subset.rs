//! Deterministic selections of a split: the labelled subset (N images per
//! class, seeded), its complement (the unlabelled corpus), and sharding.

use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::images::ImageSet;

/// Which images of a split a stage uses.
///
/// Written as `all`, `labelled:N:SEED` or `unlabelled:N:SEED`: the labelled
/// subset takes N images of every class, chosen by a seeded shuffle; the
/// unlabelled subset is every other image of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    All,
    Labelled { per_class: usize, seed: u64 },
    Unlabelled { per_class: usize, seed: u64 },
}

impl Subset {
    /// Row indices of `set` in this subset, in storage order.
    pub fn rows(&self, set: &ImageSet) -> Result<Vec<usize>, DataError> {
        self.rows_of(set.labels.as_deref(), set.len())
    }

    /// Row indices of a split of `len` rows with these labels.
    pub fn rows_of(&self, labels: Option<&[i64]>, len: usize) -> Result<Vec<usize>, DataError> {
        let (per_class, seed, labelled) = match *self {
            Subset::All => return Ok((0..len).collect()),
            Subset::Labelled { per_class, seed } => (per_class, seed, true),
            Subset::Unlabelled { per_class, seed } => (per_class, seed, false),
        };
        let labels = labels.ok_or_else(|| {
            DataError::Invalid("choosing a labelled subset needs labelled images, but this set has no labels".into())
        })?;
        let num_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (row, &label) in labels.iter().enumerate() {
            by_class[label as usize].push(row);
        }
        let mut chosen = vec![false; len];
        for (class, rows) in by_class.iter_mut().enumerate() {
            if rows.len() < per_class {
                return Err(DataError::Subset {
                    text: self.to_string(),
                    message: format!("class {class} has only {} images, fewer than {per_class}", rows.len()),
                });
            }
            // One stream per class, so a class's choice does not depend on
            // how many images other classes have.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            rows.shuffle(&mut rng);
            for &row in &rows[..per_class] {
                chosen[row] = true;
            }
        }
        Ok((0..len).filter(|&r| chosen[r] == labelled).collect())
    }

    /// The images of this subset.
    pub fn apply(&self, set: &ImageSet) -> Result<ImageSet, DataError> {
        Ok(set.select(&self.rows(set)?))
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subset::All => write!(f, "all"),
            Subset::Labelled { per_class, seed } => write!(f, "labelled:{per_class}:{seed}"),
            Subset::Unlabelled { per_class, seed } => write!(f, "unlabelled:{per_class}:{seed}"),
        }
    }
}

impl FromStr for Subset {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, DataError> {
        let err = |message: &str| DataError::Subset { text: text.to_string(), message: message.to_string() };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["all"] => Ok(Subset::All),
            [kind @ ("labelled" | "unlabelled"), n, seed] => {
                let per_class = n.parse().map_err(|_| err("expected N (images per class) to be a whole number"))?;
                let seed = seed.parse().map_err(|_| err("expected SEED to be a whole number"))?;
                Ok(if *kind == "labelled" {
                    Subset::Labelled { per_class, seed }
                } else {
                    Subset::Unlabelled { per_class, seed }
                })
            }
            _ => Err(err("expected `all`, `labelled:N:SEED` or `unlabelled:N:SEED`")),
        }
    }
}

impl Serialize for Subset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The shard (0-based) that an image id belongs to, out of `num_shards`.
///
/// A hash of the id (64-bit FNV-1a), so the split needs no pixels, does not
/// depend on listing order, and stays the same when other images come or go.
pub fn shard_of(id: &str, num_shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % num_shards as u64) as usize
}

/// Rows of `set` that fall in shard `index` of `num_shards`.
pub fn shard_rows(set: &ImageSet, index: usize, num_shards: usize) -> Result<Vec<usize>, DataError> {
    if num_shards == 0 || index >= num_shards {
        return Err(DataError::Invalid(format!(
            "shard index {index} is out of range: expected 0 <= index < num_shards ({num_shards})"
        )));
    }
    Ok((0..set.len()).filter(|&r| shard_of(&set.ids[r], num_shards) == index).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: i64) -> ImageSet {
        ImageSet {
            ids: (0..n).map(|i| format!("t-{i:06}")).collect(),
            labels: Some((0..n as i64).map(|i| i % classes).collect()),
            pixels: vec![0; n * 4],
            channels: 1,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn labelled_and_unlabelled_are_complements_with_n_per_class() {
        let set = toy(100, 4);
        let l = Subset::Labelled { per_class: 5, seed: 3 }.rows(&set).unwrap();
        let u = Subset::Unlabelled { per_class: 5, seed: 3 }.rows(&set).unwrap();
        assert_eq!(l.len(), 20);
        assert_eq!(u.len(), 80);
        for c in 0..4 {
            assert_eq!(l.iter().filter(|&&r| r as i64 % 4 == c).count(), 5);
        }
        let mut all: Vec<usize> = l.iter().chain(u.iter()).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        // Same seed, same choice; another seed, another choice.
        assert_eq!(l, Subset::Labelled { per_class: 5, seed: 3 }.rows(&set).unwrap());
        assert_ne!(l, Subset::Labelled { per_class: 5, seed: 4 }.rows(&set).unwrap());
    }

    #[test]
    fn subset_text_round_trips_and_rejects_garbage() {
        for t in ["all", "labelled:100:0", "unlabelled:7:42"] {
            assert_eq!(t.parse::<Subset>().unwrap().to_string(), t);
        }
        let err = "labelled:x:0".parse::<Subset>().unwrap_err().to_string();
        assert!(err.contains("labelled:x:0"), "{err}");
        assert!("some".parse::<Subset>().is_err());
    }

    #[test]
    fn shards_are_disjoint_and_cover_every_image() {
        let set = toy(1000, 10);
        let mut seen = vec![0; 1000];
        for s in 0..7 {
            for r in shard_rows(&set, s, 7).unwrap() {
                seen[r] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert!(shard_rows(&set, 7, 7).is_err());
    }
}
