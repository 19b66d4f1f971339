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
    /// `idx`: the image file (`.gz` or raw). `folder`: the split's folder.
    /// `tar`: a `.tar` file or a folder of them. `parquet`: a `.parquet` file
    /// or a folder of them. Relative to the spec's root.
    pub images: PathBuf,
    /// `idx` only: the label file; absent for an unlabelled split.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// `folder`: images sit in one subfolder per class (`true`, ImageNet's
    /// layout) or directly in the folder, unlabelled (`false`).
    /// `tar`/`parquet`: read labels (`.cls`/`.json` members; the label
    /// column) when present.
    #[serde(default)]
    pub labelled: Option<bool>,
}

/// Storage format of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The MNIST family's IDX files, optionally gzip'd.
    Idx,
    /// Image files (JPEG, PNG) in a folder, in class subfolders or flat.
    Folder,
    /// WebDataset-style tar shards: members sharing a basename form a sample
    /// (`key.jpg` + `key.cls` or `key.json`).
    Tar,
    /// Parquet with an image-bytes column (binary, or Hugging Face's struct
    /// with a `bytes` field) and optional label and id columns.
    Parquet,
}

/// Column names of a Parquet corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetColumns {
    #[serde(default = "image_column")]
    pub image: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

fn image_column() -> String {
    "image".into()
}

impl Default for ParquetColumns {
    fn default() -> Self {
        ParquetColumns { image: image_column(), label: None, id: None }
    }
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
    /// `parquet` format: which columns hold what.
    #[serde(default)]
    pub columns: ParquetColumns,
    /// Evaluation and labelling crop of decoded images (corpus formats):
    /// the short side is resized to `size / crop_fraction` and the centre
    /// `height` x `width` taken, bicubic. 1.0 keeps the whole short side;
    /// ImageNet practice is 0.875.
    #[serde(default = "one")]
    pub crop_fraction: f32,
    /// Training crop: `pad-crop` (pad by an eighth and crop back at random,
    /// for small images already at size) or `random-resized` (a random 8%
    /// to 100% of the image at aspect 3/4..4/3, resized to size; ImageNet's).
    #[serde(default)]
    pub train_crop: TrainCrop,
    /// Where the spec was read from (not part of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

fn one() -> f32 {
    1.0
}

/// How training images are cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainCrop {
    #[default]
    PadCrop,
    RandomResized,
}

impl DataSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut spec: DataSpec =
            toml::from_str(&text).map_err(|e| DataError::Spec { path: path.to_path_buf(), message: e.to_string() })?;
        spec.source = path.to_path_buf();
        spec.validate()?;
        Ok(spec)
    }

    fn spec_error(&self, message: impl Into<String>) -> DataError {
        DataError::Spec { path: self.source.clone(), message: message.into() }
    }

    fn validate(&self) -> Result<(), DataError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(self.spec_error(format!("key `channels`: expected 1 or 3, found {}", self.channels)));
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
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(self
                .spec_error(format!("key `crop_fraction`: expected a value in (0, 1], found {}", self.crop_fraction)));
        }
        if self.format == Format::Idx && self.train_crop == TrainCrop::RandomResized {
            return Err(self.spec_error(
                "key `train_crop`: `random-resized` needs a corpus format (folder, tar, parquet); IDX images are used at their stored size",
            ));
        }
        if self.classes.len() < 2 {
            return Err(self.spec_error("key `classes`: expected at least two class names"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(self.spec_error(format!("key `classes`: {dup:?} appears more than once")));
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
            self.spec_error(format!("no split named {name:?}; the spec has: {}", known.join(", ")))
        })
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Resolves a file of the data set, failing with the install hint when it
    /// is absent.
    pub fn file(&self, relative: &Path) -> Result<PathBuf, DataError> {
        self.existing(relative, false)
    }

    /// Resolves a file or folder of the data set (corpus formats).
    pub fn file_or_dir(&self, relative: &Path) -> Result<PathBuf, DataError> {
        self.existing(relative, true)
    }

    fn existing(&self, relative: &Path, dir_ok: bool) -> Result<PathBuf, DataError> {
        let path = self.root_dir().join(relative);
        if path.is_file() || (dir_ok && path.is_dir()) {
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
