//! The pseudo-label shard schema, defined once here and used by `label`
//! (writes shards), `filter` (reads shards, writes the filtered file) and
//! `train` (reads the filtered file). `data-specs/shard-schema.md` documents
//! it for users.

use std::collections::BTreeMap;

use crate::error::DataError;

/// Bumped when a column or metadata key changes meaning.
pub const SCHEMA_VERSION: &str = "1";

/// Stable image id (joins pseudo-labels back to images). Utf8, not null.
pub const COL_IMAGE_ID: &str = "image_id";
/// Teacher's top-1 class index. Int32, not null.
pub const COL_LABEL: &str = "label";
/// Teacher's top-1 probability. Float32, not null.
pub const COL_CONFIDENCE: &str = "confidence";
/// The k most probable classes, most probable first. List<Int32>.
pub const COL_TOPK_CLASSES: &str = "topk_classes";
/// Their probabilities, same order. List<Float32>.
pub const COL_TOPK_PROBS: &str = "topk_probs";
/// Identity of the teacher that produced the row. Utf8, not null.
pub const COL_TEACHER: &str = "teacher";
/// Filtered file only: 0 for an image's first row, 1.. for the copies that
/// fill a class up to K. Int32, not null.
pub const COL_COPY: &str = "copy";

/// File metadata keys (Parquet key-value metadata).
pub const META_SCHEMA_VERSION: &str = "selftrain.schema_version";
pub const META_TEACHER: &str = "selftrain.teacher";
pub const META_TEACHER_SHA256: &str = "selftrain.teacher_sha256";
pub const META_CLASS_NAMES: &str = "selftrain.class_names";
pub const META_CORPUS: &str = "selftrain.corpus";
pub const META_SHARD_INDEX: &str = "selftrain.shard_index";
pub const META_NUM_SHARDS: &str = "selftrain.num_shards";
pub const META_NUM_ROWS: &str = "selftrain.num_rows";
pub const META_TOPK: &str = "selftrain.topk";
pub const META_SKIPPED_ROWS: &str = "selftrain.skipped_rows";
pub const META_FILTER: &str = "selftrain.filter";

/// File name of shard `index` of `num_shards`.
pub fn shard_file_name(index: usize, num_shards: usize) -> String {
    format!("part-{index:05}-of-{num_shards:05}.parquet")
}

/// Parses a shard file name back into `(index, num_shards)`.
pub fn parse_shard_file_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (index, total) = rest.split_once("-of-")?;
    if index.len() != 5 || total.len() != 5 {
        return None;
    }
    Some((index.parse().ok()?, total.parse().ok()?))
}

/// What a shard's metadata records.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMeta {
    pub teacher: String,
    pub teacher_sha256: String,
    pub class_names: Vec<String>,
    /// JSON describing the corpus: spec, split, subset.
    pub corpus: String,
    pub shard_index: usize,
    pub num_shards: usize,
    pub num_rows: usize,
    pub topk: usize,
    /// Images of the shard that could not be used (absent in older files:
    /// read as 0).
    pub skipped_rows: usize,
}

impl ShardMeta {
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        vec![
            (META_SCHEMA_VERSION.into(), SCHEMA_VERSION.into()),
            (META_TEACHER.into(), self.teacher.clone()),
            (META_TEACHER_SHA256.into(), self.teacher_sha256.clone()),
            (META_CLASS_NAMES.into(), serde_json::to_string(&self.class_names).unwrap_or_else(|_| "[]".into())),
            (META_CORPUS.into(), self.corpus.clone()),
            (META_SHARD_INDEX.into(), self.shard_index.to_string()),
            (META_NUM_SHARDS.into(), self.num_shards.to_string()),
            (META_NUM_ROWS.into(), self.num_rows.to_string()),
            (META_TOPK.into(), self.topk.to_string()),
            (META_SKIPPED_ROWS.into(), self.skipped_rows.to_string()),
        ]
    }

    /// Reads the metadata back; `file` names the source in errors.
    pub fn from_pairs(file: &str, pairs: &BTreeMap<String, String>) -> Result<Self, DataError> {
        let get = |key: &str| {
            pairs.get(key).cloned().ok_or_else(|| {
                DataError::Invalid(format!("{file}: missing Parquet metadata key {key:?}; not a selftrain shard?"))
            })
        };
        let number = |key: &str| -> Result<usize, DataError> {
            let v = get(key)?;
            v.parse().map_err(|_| {
                DataError::Invalid(format!("{file}: metadata key {key:?} should be a whole number, found {v:?}"))
            })
        };
        let version = get(META_SCHEMA_VERSION)?;
        if version != SCHEMA_VERSION {
            return Err(DataError::Invalid(format!(
                "{file}: shard schema version {version:?}, this build reads {SCHEMA_VERSION:?}"
            )));
        }
        let names = get(META_CLASS_NAMES)?;
        let class_names = serde_json::from_str(&names).map_err(|e| {
            DataError::Invalid(format!("{file}: metadata key {META_CLASS_NAMES:?} is not a JSON list of strings: {e}"))
        })?;
        Ok(ShardMeta {
            teacher: get(META_TEACHER)?,
            teacher_sha256: get(META_TEACHER_SHA256)?,
            class_names,
            corpus: get(META_CORPUS)?,
            shard_index: number(META_SHARD_INDEX)?,
            num_shards: number(META_NUM_SHARDS)?,
            num_rows: number(META_NUM_ROWS)?,
            topk: number(META_TOPK)?,
            skipped_rows: if pairs.contains_key(META_SKIPPED_ROWS) { number(META_SKIPPED_ROWS)? } else { 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_round_trip() {
        assert_eq!(shard_file_name(3, 12), "part-00003-of-00012.parquet");
        assert_eq!(parse_shard_file_name("part-00003-of-00012.parquet"), Some((3, 12)));
        assert_eq!(parse_shard_file_name("part-3-of-12.parquet"), None);
        assert_eq!(parse_shard_file_name(".part-00003-of-00012.parquet.tmp"), None);
    }

    #[test]
    fn metadata_round_trips_and_missing_keys_are_named() {
        let meta = ShardMeta {
            teacher: "t@abc".into(),
            teacher_sha256: "abc".into(),
            class_names: vec!["a".into(), "b".into()],
            corpus: "{}".into(),
            shard_index: 1,
            num_shards: 4,
            num_rows: 10,
            topk: 2,
            skipped_rows: 1,
        };
        let pairs: BTreeMap<String, String> = meta.to_pairs().into_iter().collect();
        assert_eq!(ShardMeta::from_pairs("f", &pairs).unwrap(), meta);
        let mut broken = pairs.clone();
        broken.remove(META_TEACHER);
        let err = ShardMeta::from_pairs("shard.parquet", &broken).unwrap_err().to_string();
        assert!(err.contains("shard.parquet") && err.contains(META_TEACHER), "{err}");
    }
}

/// Keys of the metadata that exported ONNX models and checkpoints carry, so
/// the label stage needs nothing but the `.onnx` file.
pub mod model_meta {
    use serde::{Deserialize, Serialize};

    /// Model name (for example `resnet-rs-50`). ONNX metadata_props key.
    pub const ONNX_MODEL_NAME: &str = "selftrain.model_name";
    /// JSON list of class names.
    pub const ONNX_CLASS_NAMES: &str = "selftrain.class_names";
    /// JSON [`Preprocess`].
    pub const ONNX_PREPROCESS: &str = "selftrain.preprocess";
    /// `logits` or `probabilities`.
    pub const ONNX_OUTPUT_KIND: &str = "selftrain.output";
    /// JSON of the resolved model configuration.
    pub const ONNX_MODEL_CONFIG: &str = "selftrain.model_config";
    /// SHA-256 of the checkpoint the graph was exported from.
    pub const ONNX_SOURCE_SHA256: &str = "selftrain.source_sha256";

    /// The preprocessing a model expects: images of `channels` x `height` x
    /// `width`, pixels scaled to [0, 1], then `(x - mean) / std` per channel.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Preprocess {
        pub channels: usize,
        pub height: usize,
        pub width: usize,
        pub mean: Vec<f32>,
        pub std: Vec<f32>,
        /// How images of another size are brought to `height` x `width`.
        pub resize: String,
    }
}
