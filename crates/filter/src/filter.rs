//! Threshold, per-class top-K and fill-up.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use selftrain_data::atomic::AtomicFile;
use selftrain_data::schema;
use serde::{Deserialize, Serialize};

use crate::error::FilterError;
use crate::shards::read_shards;

/// The filter's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Keep images whose top probability is at least this (Noisy Student:
    /// 0.3).
    pub threshold: f32,
    /// K: images per class after balancing.
    pub per_class: usize,
    /// Fill classes with fewer than K images by repeating them.
    #[serde(default = "yes")]
    pub fill: bool,
    /// Seed of the random choice of the fractional copies.
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

/// Per-class result of the filter.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub class: String,
    /// Images the teacher assigned to the class.
    pub predicted: usize,
    /// Of those, images at or above the threshold.
    pub confident: usize,
    /// Distinct images kept.
    pub kept: usize,
    /// Extra rows added by repeating images.
    pub duplicates: usize,
    /// Lowest top probability among the kept images.
    pub min_confidence: Option<f32>,
}

/// What the filter did.
#[derive(Debug, Clone, Serialize)]
pub struct FilterReport {
    pub output: PathBuf,
    pub teacher: String,
    pub shards: usize,
    pub input_rows: usize,
    pub output_rows: usize,
    pub threshold: f32,
    pub per_class: usize,
    pub classes: Vec<ClassStats>,
}

/// The row positions (into a frame sorted by class, then confidence
/// descending) that balancing keeps, with each row's copy number.
fn balance(segment: std::ops::Range<usize>, k: usize, fill: bool, rng: &mut ChaCha8Rng) -> Vec<(usize, i32)> {
    let n = segment.len();
    let unique = n.min(k);
    let mut chosen: Vec<(usize, i32)> = segment.clone().take(unique).map(|r| (r, 0)).collect();
    if fill && unique > 0 && unique < k {
        let whole = k / unique; // copies of every image, the original included
        for copy in 1..whole {
            chosen.extend(segment.clone().take(unique).map(|r| (r, copy as i32)));
        }
        let rest = k - whole * unique;
        let mut extra: Vec<usize> = sample(rng, unique, rest).into_iter().collect();
        extra.sort_unstable();
        chosen.extend(extra.into_iter().map(|i| (segment.start + i, whole as i32)));
    }
    chosen
}

fn sort_by_class_then_confidence(frame: &DataFrame) -> Result<DataFrame, FilterError> {
    Ok(frame.sort(
        [schema::COL_LABEL, schema::COL_CONFIDENCE, schema::COL_IMAGE_ID],
        SortMultipleOptions::default().with_order_descending_multi([false, true, false]).with_maintain_order(true),
    )?)
}

/// Filters the shards in `shard_dir` into `output` (written atomically).
pub fn filter_shards(shard_dir: &Path, output: &Path, config: &FilterConfig) -> Result<FilterReport, FilterError> {
    if !(0.0..=1.0).contains(&config.threshold) {
        return Err(FilterError::Invalid(format!("threshold {}: expected 0 <= threshold <= 1", config.threshold)));
    }
    if config.per_class == 0 {
        return Err(FilterError::Invalid("per_class (K): expected at least 1".into()));
    }
    let shards = read_shards(shard_dir)?;
    let class_names = shards.meta.class_names.clone();
    let all = &shards.frame;
    let labels_all = all.column(schema::COL_LABEL)?.i32()?.clone();
    let mut predicted = vec![0usize; class_names.len()];
    for l in labels_all.into_no_null_iter() {
        let c = usize::try_from(l).ok().filter(|c| *c < class_names.len()).ok_or_else(|| {
            FilterError::Invalid(format!("label {l} in the shards is outside the {} classes", class_names.len()))
        })?;
        predicted[c] += 1;
    }

    let mask = all.column(schema::COL_CONFIDENCE)?.f32()?.gt_eq(config.threshold);
    let confident = sort_by_class_then_confidence(&all.filter(&mask)?)?;
    let labels = confident.column(schema::COL_LABEL)?.i32()?.clone();
    let conf = confident.column(schema::COL_CONFIDENCE)?.f32()?.clone();
    let labels: Vec<i32> = labels.into_no_null_iter().collect();
    let conf: Vec<f32> = conf.into_no_null_iter().collect();

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut indices: Vec<IdxSize> = Vec::new();
    let mut copies: Vec<i32> = Vec::new();
    let mut classes = Vec::new();
    let mut start = 0;
    for (c, name) in class_names.iter().enumerate() {
        let mut end = start;
        while end < labels.len() && labels[end] as usize == c {
            end += 1;
        }
        let picked = balance(start..end, config.per_class, config.fill, &mut rng);
        let kept = picked.iter().filter(|(_, copy)| *copy == 0).count();
        classes.push(ClassStats {
            class: name.clone(),
            predicted: predicted[c],
            confident: end - start,
            kept,
            duplicates: picked.len() - kept,
            min_confidence: (kept > 0).then(|| conf[start + kept - 1]),
        });
        if kept == 0 {
            tracing::warn!("class {name:?} has no pseudo-labelled image at or above threshold {}", config.threshold);
        }
        for (row, copy) in picked {
            indices.push(row as IdxSize);
            copies.push(copy);
        }
        start = end;
    }

    let mut out = confident.take(&IdxCa::from_vec("index".into(), indices))?;
    out.with_column(Column::new(schema::COL_COPY.into(), copies))?;

    let filter_json = serde_json::to_string(config).map_err(|e| FilterError::Invalid(e.to_string()))?;
    let meta = &shards.meta;
    let pairs = vec![
        (schema::META_SCHEMA_VERSION.to_string(), schema::SCHEMA_VERSION.to_string()),
        (schema::META_TEACHER.to_string(), meta.teacher.clone()),
        (schema::META_TEACHER_SHA256.to_string(), meta.teacher_sha256.clone()),
        (schema::META_CLASS_NAMES.to_string(), serde_json::to_string(&class_names).unwrap_or_default()),
        (schema::META_CORPUS.to_string(), meta.corpus.clone()),
        (schema::META_NUM_ROWS.to_string(), out.height().to_string()),
        (schema::META_TOPK.to_string(), meta.topk.to_string()),
        (schema::META_FILTER.to_string(), filter_json),
    ];
    write_parquet(&mut out, output, pairs)?;
    Ok(FilterReport {
        output: output.to_path_buf(),
        teacher: meta.teacher.clone(),
        shards: shards.files.len(),
        input_rows: all.height(),
        output_rows: out.height(),
        threshold: config.threshold,
        per_class: config.per_class,
        classes,
    })
}

fn write_parquet(frame: &mut DataFrame, output: &Path, pairs: Vec<(String, String)>) -> Result<(), FilterError> {
    let file = AtomicFile::create(output)?;
    let handle: File = file.try_clone()?;
    ParquetWriter::new(handle)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(pairs)))
        .finish(frame)
        .map_err(|e| FilterError::File { path: output.to_path_buf(), message: format!("cannot write: {e}") })?;
    file.commit()?;
    Ok(())
}

/// Accuracy of the pseudo-labels in `frame` against known true labels
/// (`image_id -> class`): `(correct, compared)`. Ids without a true label are
/// not compared.
pub fn label_accuracy(frame: &DataFrame, truth: &HashMap<String, i64>) -> Result<(usize, usize), FilterError> {
    let ids = frame.column(schema::COL_IMAGE_ID)?.str()?.clone();
    let labels = frame.column(schema::COL_LABEL)?.i32()?.clone();
    let (mut correct, mut compared) = (0, 0);
    for (id, label) in ids.iter().zip(labels.iter()) {
        if let (Some(id), Some(label)) = (id, label) {
            if let Some(t) = truth.get(id) {
                compared += 1;
                correct += usize::from(*t == i64::from(label));
            }
        }
    }
    Ok((correct, compared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_caps_at_k_and_fills_with_whole_and_random_copies() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let capped = balance(10..20, 4, true, &mut rng);
        assert_eq!(capped, vec![(10, 0), (11, 0), (12, 0), (13, 0)]);
        let filled = balance(0..3, 8, true, &mut rng);
        assert_eq!(filled.len(), 8);
        // Two whole copies of each of the 3 images, plus 2 distinct extras.
        for r in 0..3 {
            let n = filled.iter().filter(|(row, _)| *row == r).count();
            assert!(n == 2 || n == 3, "{filled:?}");
        }
        let extras: Vec<_> = filled.iter().filter(|(_, c)| *c == 2).collect();
        assert_eq!(extras.len(), 2);
        assert_ne!(extras[0].0, extras[1].0);
        assert_eq!(balance(0..3, 8, false, &mut rng).len(), 3);
        assert!(balance(5..5, 8, true, &mut rng).is_empty());
    }
}

/// How accurate pseudo-labels were, against labels held back from the label
/// stage.
#[derive(Debug, Clone, Serialize)]
pub struct PseudoAccuracy {
    /// Every labelled image of the corpus.
    pub all_correct: usize,
    pub all_total: usize,
    /// The distinct images the filter kept.
    pub kept_correct: usize,
    pub kept_total: usize,
}

/// Compares the shards in `shard_dir` and the filtered file with `truth`.
pub fn pseudo_label_accuracy(
    shard_dir: &Path,
    filtered: &Path,
    truth: &HashMap<String, i64>,
) -> Result<PseudoAccuracy, FilterError> {
    let shards = read_shards(shard_dir)?;
    let (all_correct, all_total) = label_accuracy(&shards.frame, truth)?;
    let file = File::open(filtered)
        .map_err(|e| FilterError::File { path: filtered.to_path_buf(), message: format!("cannot open: {e}") })?;
    let frame = ParquetReader::new(file)
        .finish()
        .map_err(|e| FilterError::File { path: filtered.to_path_buf(), message: e.to_string() })?;
    let first = frame.column(schema::COL_COPY)?.i32()?.equal(0);
    let (kept_correct, kept_total) = label_accuracy(&frame.filter(&first)?, truth)?;
    Ok(PseudoAccuracy { all_correct, all_total, kept_correct, kept_total })
}
