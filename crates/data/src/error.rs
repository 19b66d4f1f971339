//! Errors of the data crate. Each names the file or key and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data spec {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("data set file {path} is missing ({hint})")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: not a valid IDX file: {message}")]
    Idx { path: PathBuf, message: String },
    #[error("invalid subset {text:?}: {message}")]
    Subset { text: String, message: String },
    #[error("invalid augmentation {text:?}: {message}")]
    Augment { text: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}
