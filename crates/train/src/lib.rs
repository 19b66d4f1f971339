//! Teacher and student training with the ResNet-RS recipe, and evaluation.
//!
//! The recipe (Bello et al. 2021): SGD with Nesterov momentum 0.9, linear
//! warm-up then cosine decay, peak learning rate given per 256 images, weight
//! decay off for BN parameters and biases, label smoothing, and an
//! exponential moving average of the weights (BN statistics included) with
//! the early-step ramp `min(d, (1 + n) / (10 + n))`. The EMA weights are what
//! is evaluated and saved. A student additionally trains on pseudo-labels
//! (Noisy Student: hard or soft targets, a fixed unlabelled:labelled ratio
//! per batch) with its noise: RandAugment, dropout and stochastic depth.

pub mod config;
pub mod error;
pub mod evaluate;
pub mod pseudo;
pub mod trainer;

pub use config::{DataConfig, OptimConfig, PseudoConfig, PseudoTargets, TrainConfig};
pub use error::TrainError;
pub use evaluate::{Evaluation, evaluate};
pub use pseudo::{PseudoLabels, read_pseudo_labels};
pub use trainer::{EpochMetrics, TrainReport, train};

/// The device training runs on: the first CUDA GPU when libtorch sees one.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
