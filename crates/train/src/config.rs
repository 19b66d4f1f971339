//! Training configuration, as written in TOML (a train config file, or a
//! `[teacher]` / `[student]` table of a pipeline file). Unknown keys are
//! errors.

use std::path::{Path, PathBuf};

use selftrain_data::Subset;
use selftrain_data::augment::Augment;
use selftrain_model::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Which data a model trains and is tested on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Data spec file (relative paths: from the config file's folder).
    pub spec: PathBuf,
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// The labelled images of the train split: `all` or `labelled:N:SEED`.
    #[serde(default = "default_subset")]
    pub subset: Subset,
    /// Split the final model is evaluated on; empty to skip.
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Corpus formats only: side of the training crops in pixels (default:
    /// the spec's size). ResNet-RS trains below its test size (RS-50: 160).
    #[serde(default)]
    pub train_resolution: Option<usize>,
    /// Corpus formats only: side of evaluation images, and the input size
    /// recorded in the checkpoint (default: the spec's size).
    #[serde(default)]
    pub test_resolution: Option<usize>,
}

fn default_train_split() -> String {
    "train".into()
}
fn default_test_split() -> String {
    "test".into()
}
fn default_subset() -> Subset {
    Subset::All
}

/// The optimisation recipe. Defaults follow ResNet-RS where they make sense
/// at small scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub epochs: usize,
    /// Labelled images per step (a student adds `ratio` times as many
    /// pseudo-labelled ones).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Peak learning rate per 256 images in a step (paper: 0.1).
    #[serde(default = "d_lr")]
    pub lr_per_256: f64,
    #[serde(default = "d_warmup")]
    pub warmup_epochs: f64,
    /// Not applied to BN parameters or biases (paper: 4e-5).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_smoothing")]
    pub label_smoothing: f64,
    /// EMA decay of the weights; 0 turns the EMA off (paper: 0.9999 at
    /// ImageNet's step counts).
    #[serde(default = "d_ema")]
    pub ema_decay: f64,
    /// `none`, `flip-crop` or `randaugment:N:M`.
    #[serde(default = "d_augment")]
    pub augment: Augment,
    #[serde(default)]
    pub seed: u64,
    /// Threads preparing batches.
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// libtorch intra-op threads; 0 = libtorch's default.
    #[serde(default)]
    pub threads: usize,
    /// Run the trunk in channels-last memory order (same results, faster
    /// training on this project's CPU; see docs/benchmarks.md).
    #[serde(default)]
    pub channels_last: bool,
}

fn d_batch() -> usize {
    128
}
fn d_lr() -> f64 {
    0.1
}
fn d_warmup() -> f64 {
    1.0
}
fn d_wd() -> f64 {
    4e-5
}
fn d_smoothing() -> f64 {
    0.1
}
fn d_ema() -> f64 {
    0.999
}
fn d_augment() -> Augment {
    Augment::FlipCrop
}
fn d_workers() -> usize {
    1
}

/// How a student uses pseudo-labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PseudoTargets {
    /// The teacher's argmax, smoothed like real labels.
    Hard,
    /// The teacher's stored top-k distribution, renormalised.
    Soft,
}

/// Pseudo-labelled data for a student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudoConfig {
    /// The filtered pseudo-label file (`selftrain filter` output).
    pub labels: PathBuf,
    /// Split of the data spec that holds the pseudo-labelled images.
    #[serde(default = "default_train_split")]
    pub split: String,
    #[serde(default = "d_targets")]
    pub targets: PseudoTargets,
    /// Pseudo-labelled images per labelled image in each step (Noisy
    /// Student: 1 for small students, 3 for larger ones).
    #[serde(default = "d_ratio")]
    pub ratio: usize,
}

fn d_targets() -> PseudoTargets {
    PseudoTargets::Soft
}
fn d_ratio() -> usize {
    1
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `teacher` or `student` (recorded in the checkpoint).
    #[serde(default = "d_role")]
    pub role: String,
    pub model: ModelSpec,
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub pseudo: Option<PseudoConfig>,
    /// Start from these weights (a selftrain or timm safetensors checkpoint
    /// of the same architecture and class count) instead of from scratch.
    #[serde(default)]
    pub init: Option<PathBuf>,
}

fn d_role() -> String {
    "teacher".into()
}

impl TrainConfig {
    /// Reads a TOML train config; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<TrainConfig, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: format!("cannot read: {e}") })?;
        let mut config: TrainConfig = toml::from_str(&text)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate().map_err(|message| TrainError::Config { path: path.to_path_buf(), message })?;
        Ok(config)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data.spec);
        if let Some(init) = &mut self.init {
            fix(init);
        }
        if let Some(pseudo) = &mut self.pseudo {
            fix(&mut pseudo.labels);
        }
    }

    /// Checks value ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let o = &self.optim;
        if o.epochs == 0 {
            return Err("key `optim.epochs`: expected at least 1".into());
        }
        if o.batch_size == 0 {
            return Err("key `optim.batch_size`: expected at least 1".into());
        }
        if !(o.lr_per_256 > 0.0) {
            return Err("key `optim.lr_per_256`: expected a positive number".into());
        }
        if !(0.0..1.0).contains(&o.ema_decay) {
            return Err("key `optim.ema_decay`: expected 0 <= decay < 1".into());
        }
        if !(0.0..1.0).contains(&o.label_smoothing) {
            return Err("key `optim.label_smoothing`: expected 0 <= smoothing < 1".into());
        }
        if let Some(p) = &self.pseudo {
            if p.ratio == 0 {
                return Err("key `pseudo.ratio`: expected at least 1".into());
            }
        }
        Ok(())
    }
}
