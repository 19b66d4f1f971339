//! Model configuration: named ResNet-RS sizes plus the scaling knobs the paper
//! studies (depth, width) and a small-input form for 28-32 px images.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Activation of the convolutional trunk (the squeeze-excitation gate always
/// uses ReLU inside, as the reference code does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Silu,
}

/// The named sizes: blocks per stage, dropout and stochastic depth rate at
/// the paper's largest training resolution for that depth, that training
/// resolution, and the test resolution of timm's released configs (the
/// train/test resolution gap).
pub const FAMILY: [(&str, [usize; 4], f64, f64, i64, i64); 7] = [
    ("resnet-rs-50", [3, 4, 6, 3], 0.25, 0.0, 160, 224),
    ("resnet-rs-101", [3, 4, 23, 3], 0.25, 0.0, 192, 288),
    ("resnet-rs-152", [3, 8, 36, 3], 0.25, 0.0, 256, 320),
    ("resnet-rs-200", [3, 24, 36, 3], 0.25, 0.1, 256, 320),
    ("resnet-rs-270", [4, 29, 53, 4], 0.25, 0.1, 256, 352),
    ("resnet-rs-350", [4, 36, 72, 4], 0.4, 0.1, 320, 384),
    ("resnet-rs-420", [4, 44, 87, 4], 0.4, 0.1, 320, 416),
];

/// What a user writes in a config file: a named size and optional overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One of `resnet-rs-50` ... `resnet-rs-420`.
    pub arch: String,
    /// Blocks per stage, replacing the named size's depth.
    #[serde(default)]
    pub depth: Option<[usize; 4]>,
    /// Width multiplier of every stage and the stem (1.0 = the paper's).
    #[serde(default)]
    pub width: Option<f64>,
    /// Small-input form for 28-32 px images: the stem's first conv has
    /// stride 1 instead of 2, so the network downsamples 16x instead of 32x.
    #[serde(default)]
    pub small_input: Option<bool>,
    #[serde(default)]
    pub dropout: Option<f64>,
    #[serde(default)]
    pub stochastic_depth: Option<f64>,
    #[serde(default)]
    pub activation: Option<Activation>,
    /// Exact widths of the stem's three convs, replacing the scaled ones
    /// (for checkpoints of other widths, e.g. timm models built with
    /// `stem_width` and its fixed 64-channel stem output).
    #[serde(default)]
    pub stem_widths: Option<[i64; 3]>,
    /// Exact bottleneck widths per stage, replacing the scaled ones (timm's
    /// `channels`).
    #[serde(default)]
    pub stage_widths: Option<[i64; 4]>,
}

/// A fully resolved ResNet-RS configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Display name, e.g. `resnet-rs-50` or `resnet-rs-50[d1-1-1-1,w0.25,small]`.
    pub name: String,
    pub blocks: [usize; 4],
    /// Bottleneck widths per stage (outputs are four times these).
    pub widths: [i64; 4],
    /// The stem's two first conv widths and its output width.
    pub stem: [i64; 3],
    pub small_input: bool,
    pub se_ratio: f64,
    pub activation: Activation,
    pub dropout: f64,
    pub stochastic_depth: f64,
    pub in_channels: i64,
    pub num_classes: i64,
}

fn scaled(width: i64, multiplier: f64) -> i64 {
    // Round to a multiple of 8 (hardware-friendly), never below 8.
    (((width as f64 * multiplier) / 8.0).round() as i64 * 8).max(8)
}

impl ModelSpec {
    pub fn named(arch: &str) -> ModelSpec {
        ModelSpec {
            arch: arch.to_string(),
            depth: None,
            width: None,
            small_input: None,
            dropout: None,
            stochastic_depth: None,
            activation: None,
            stem_widths: None,
            stage_widths: None,
        }
    }

    /// Resolves the spec for `in_channels`-channel images and `num_classes`.
    pub fn resolve(&self, in_channels: i64, num_classes: i64) -> Result<ModelConfig, ModelError> {
        let Some(&(_, blocks, dropout, sd, _, _)) = FAMILY.iter().find(|f| f.0 == self.arch) else {
            let names: Vec<&str> = FAMILY.iter().map(|f| f.0).collect();
            return Err(ModelError::Config(format!(
                "unknown arch {:?}; expected one of {}",
                self.arch,
                names.join(", ")
            )));
        };
        let blocks = self.depth.unwrap_or(blocks);
        if blocks.contains(&0) {
            return Err(ModelError::Config(format!("depth {blocks:?}: every stage needs at least one block")));
        }
        let multiplier = self.width.unwrap_or(1.0);
        if !(multiplier > 0.0 && multiplier <= 8.0) {
            return Err(ModelError::Config(format!("width {multiplier}: expected 0 < width <= 8")));
        }
        let dropout = self.dropout.unwrap_or(dropout);
        let stochastic_depth = self.stochastic_depth.unwrap_or(sd);
        for (key, v) in [("dropout", dropout), ("stochastic_depth", stochastic_depth)] {
            if !(0.0..1.0).contains(&v) {
                return Err(ModelError::Config(format!("{key} {v}: expected 0 <= {key} < 1")));
            }
        }
        if num_classes < 1 || in_channels < 1 {
            return Err(ModelError::Config(format!(
                "expected positive class and channel counts, found {num_classes} classes, {in_channels} channels"
            )));
        }
        let small_input = self.small_input.unwrap_or(false);
        let mut name = self.arch.clone();
        let mut knobs = Vec::new();
        if let Some(d) = self.depth {
            knobs.push(format!("d{}-{}-{}-{}", d[0], d[1], d[2], d[3]));
        }
        if multiplier != 1.0 {
            knobs.push(format!("w{multiplier}"));
        }
        if small_input {
            knobs.push("small".to_string());
        }
        if let Some(w) = self.stem_widths {
            knobs.push(format!("stem{}-{}-{}", w[0], w[1], w[2]));
        }
        if let Some(w) = self.stage_widths {
            knobs.push(format!("c{}-{}-{}-{}", w[0], w[1], w[2], w[3]));
        }
        for w in self.stem_widths.iter().flatten().chain(self.stage_widths.iter().flatten()) {
            if *w < 1 {
                return Err(ModelError::Config(format!("widths must be positive, found {w}")));
            }
        }
        if !knobs.is_empty() {
            name = format!("{name}[{}]", knobs.join(","));
        }
        Ok(ModelConfig {
            name,
            blocks,
            widths: self.stage_widths.unwrap_or([64, 128, 256, 512].map(|w| scaled(w, multiplier))),
            stem: self.stem_widths.unwrap_or([32, 32, 64].map(|w| scaled(w, multiplier))),
            small_input,
            se_ratio: 0.25,
            activation: self.activation.unwrap_or(Activation::Relu),
            dropout,
            stochastic_depth,
            in_channels,
            num_classes,
        })
    }
}

impl ModelConfig {
    /// Stochastic depth rate of stage `stage` (0-based): the paper grows it
    /// by stage, 2/5 .. 5/5 of the model's rate.
    pub fn stage_drop_rate(&self, stage: usize) -> f64 {
        self.stochastic_depth * (stage as f64 + 2.0) / 5.0
    }

    /// The paper's default train and test resolution of a named size.
    pub fn resolutions(arch: &str) -> Option<(i64, i64)> {
        FAMILY.iter().find(|f| f.0 == arch).map(|f| (f.4, f.5))
    }
}
