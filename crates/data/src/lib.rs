//! Data sets, corpora and the plain-array side of the pipeline.
//!
//! This crate knows neither tch nor ONNX Runtime: it reads data set specs,
//! decodes images into `u8` buffers, selects deterministic labelled /
//! unlabelled subsets, shards corpora, augments (RandAugment) and normalises
//! into `f32` NCHW batches. Consumers turn those buffers into their own
//! tensors. It also owns the shard schema shared by `label`, `filter` and
//! `train`, and the [`Progress`] interface libraries report through.

pub mod atomic;
pub mod augment;
pub mod corpus;
pub mod error;
pub mod idx;
pub mod images;
pub mod loader;
pub mod progress;
pub mod samples;
pub mod schema;
pub mod spec;
pub mod subset;
pub mod synth;

pub use error::DataError;
pub use images::ImageSet;
pub use progress::{NoProgress, Progress};
pub use samples::{Samples, Split};
pub use spec::DataSpec;
pub use subset::Subset;
