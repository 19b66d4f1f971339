//! Confidence filtering and class balancing of pseudo-label shards, with
//! polars.
//!
//! Noisy Student's rule: keep images whose top probability reaches a
//! threshold; per class take the most confident up to K; a class with fewer
//! than K is filled up by repeating its images (whole copies, then a seeded
//! random choice for the remainder). The output is one Parquet file with the
//! shard columns plus `copy`. This crate needs neither libtorch nor ONNX
//! Runtime.

mod error;
mod filter;
mod shards;

pub use error::FilterError;
pub use filter::{
    ClassStats, FilterConfig, FilterReport, PseudoAccuracy, filter_shards, label_accuracy, pseudo_label_accuracy,
};
pub use shards::{Shards, read_shards};
