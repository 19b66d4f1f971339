//! Data set specs: TOML files under `data-specs/` that say where a data set's
//! files are, how images look (channels, size), how to normalise them, and the
//! class names. Unknown keys are errors, so a typo never passes silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Where a split's images (and labels) live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFiles {
    /// IDX image file (`.gz` or raw), relative to the spec's root.
    pub images: PathBuf,
    /// IDX label file; absent for an unlabelled split.
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

/// Storage format of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The MNIST family's IDX files, optionally gzip'd.
    Idx,
}

/// A data set description, as written in `data-specs/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub name: String,
    pub format: Format,
    /// Folder holding the files; relative paths are taken from the spec file's
    /// folder.
    pub root: PathBuf,
    /// Environment variable that, when set, replaces `root`.
    #[serde(default)]
    pub root_env: Option<String>,
    /// Told to the user when the files are missing.
    #[serde(default)]
    pub install_hint: Option<String>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per-channel mean of pixel values scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of pixel values scaled to [0, 1].
    pub std: Vec<f32>,
    pub classes: Vec<String>,
    pub splits: BTreeMap<String, SplitFiles>,
    /// Where the spec was read from (not part of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

impl DataSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut spec: DataSpec = toml::from_str(&text).map_err(|e| DataError::Spec {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        spec.source = path.to_path_buf();
        spec.validate()?;
        Ok(spec)
    }

    fn spec_error(&self, message: impl Into<String>) -> DataError {
        DataError::Spec { path: self.source.clone(), message: message.into() }
    }

    fn validate(&self) -> Result<(), DataError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(self.spec_error(format!(
                "key `channels`: expected 1 or 3, found {}",
                self.channels
            )));
        }
        if self.height == 0 || self.width == 0 {
            return Err(self.spec_error("keys `height`/`width`: expected positive sizes"));
        }
        for (key, values) in [("mean", &self.mean), ("std", &self.std)] {
            if values.len() != self.channels {
                return Err(self.spec_error(format!(
                    "key `{key}`: expected {} value(s), one per channel, found {}",
                    self.channels,
                    values.len()
                )));
            }
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err(self.spec_error("key `std`: expected positive values"));
        }
        if self.classes.len() < 2 {
            return Err(self.spec_error("key `classes`: expected at least two class names"));
        }
        if self.splits.is_empty() {
            return Err(self.spec_error("key `splits`: expected at least one split"));
        }
        Ok(())
    }

    /// The folder the data files are read from.
    pub fn root_dir(&self) -> PathBuf {
        if let Some(var) = &self.root_env {
            if let Some(value) = std::env::var_os(var) {
                return PathBuf::from(value);
            }
        }
        if self.root.is_absolute() {
            self.root.clone()
        } else {
            self.source.parent().unwrap_or(Path::new(".")).join(&self.root)
        }
    }

    /// The files of a split, or an error naming the splits that exist.
    pub fn split(&self, name: &str) -> Result<&SplitFiles, DataError> {
        self.splits.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.splits.keys().map(String::as_str).collect();
            self.spec_error(format!(
                "no split named {name:?}; the spec has: {}",
                known.join(", ")
            ))
        })
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Resolves a file of the data set, failing with the install hint when it
    /// is absent.
    pub fn file(&self, relative: &Path) -> Result<PathBuf, DataError> {
        let path = self.root_dir().join(relative);
        if path.is_file() {
            return Ok(path);
        }
        let mut hint = format!("data set {:?} from spec {}", self.name, self.source.display());
        if let Some(install) = &self.install_hint {
            hint.push_str("; ");
            hint.push_str(install);
        }
        if let Some(var) = &self.root_env {
            hint.push_str(&format!("; or set {var} to the folder holding the files"));
        }
        Err(DataError::Missing { path, hint })
    }
}
