//! Pseudo-labelling with ONNX Runtime: batch inference of any ONNX
//! classifier over an unlabelled corpus, written as Parquet shards.
//!
//! One call labels one shard (`shard_index` of `num_shards`), so a scheduler
//! array runs one task per shard. A shard is written under a temporary name
//! and renamed when complete; a finished shard from the same teacher and
//! corpus is recognised and skipped, so rerunning an array retries only the
//! unfinished tasks. This crate needs neither libtorch nor the model crate.

mod error;
mod shard;
mod teacher;

pub use error::LabelError;
pub use shard::{LabelConfig, ShardOutcome, label_shard, read_shard_meta, skipped_file_name};
pub use teacher::{Teacher, TeacherOverrides, init_runtime};
