//! Errors of the label crate; each names the file involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("teacher model {path}: {message}")]
    Teacher { path: PathBuf, message: String },
    #[error("shard {path}: {message}")]
    Shard { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] selftrain_data::DataError),
}
