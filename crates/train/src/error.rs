//! Errors of the train crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("train config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("pseudo-labels {path}: {message}")]
    Pseudo { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] selftrain_data::DataError),
    #[error(transparent)]
    Model(#[from] selftrain_model::ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
