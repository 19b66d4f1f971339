//! The ResNet-RS family in tch, its safetensors checkpoints and a pure-Rust
//! ONNX exporter.
//!
//! Architecture after Bello et al., "Revisiting ResNets" (2021): a three-conv
//! stem whose max-pool is replaced by a stride-2 conv, bottleneck blocks with
//! squeeze-excitation, ResNet-D average-pool shortcuts, zero-initialised last
//! BN scale, per-stage stochastic depth and dropout before the classifier.
//! Variable names follow timm's `resnetrs*` state-dict keys.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod onnx;
mod proto;
pub mod resnet_rs;
pub mod summary;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use config::{Activation, ModelConfig, ModelSpec};
pub use error::ModelError;
pub use resnet_rs::ResNetRs;

use std::path::Path;

/// A model rebuilt from a self-describing checkpoint, in evaluation-ready form.
pub struct LoadedModel {
    pub vs: tch::nn::VarStore,
    pub model: ResNetRs,
    pub meta: CheckpointMeta,
    pub sha256: String,
}

/// Reads a checkpoint written by selftrain and rebuilds its model on `device`.
pub fn load_model(path: &Path, device: tch::Device) -> Result<LoadedModel, ModelError> {
    load_model_with(path, device, None)
}

/// Like [`load_model`], for checkpoints that may carry no selftrain metadata
/// (timm's `safetensors.torch.save_file(model.state_dict())`): `fallback`
/// then says what the model is. A checkpoint's own metadata wins.
pub fn load_model_with(
    path: &Path,
    device: tch::Device,
    fallback: Option<&CheckpointMeta>,
) -> Result<LoadedModel, ModelError> {
    let ck = Checkpoint::read(path)?;
    let meta = match (&ck.meta, fallback) {
        (Some(meta), _) => meta.clone(),
        (None, Some(fallback)) => fallback.clone(),
        (None, None) => ck.require_meta()?.clone(),
    };
    let mut vs = tch::nn::VarStore::new(device);
    let model = ResNetRs::new(&vs.root(), &meta.model);
    ck.load_into(&mut vs)?;
    Ok(LoadedModel { vs, model, meta, sha256: ck.sha256 })
}
