//! Errors of the filter crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] selftrain_data::DataError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
}
