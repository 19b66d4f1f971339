//! The exported ONNX graph computes the same function as the tch model:
//! every parameter randomised (BN statistics and zero-initialised scales
//! included, so no branch is trivially zero), exported from Rust, run in
//! ONNX Runtime, compared with the tch forward pass in evaluation mode.

use std::collections::HashMap;

use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use selftrain_data::schema::model_meta::{self as keys, Preprocess};
use selftrain_model::onnx::{ExportOptions, ExternalData, OutputKind, export_bytes};
use selftrain_model::{Activation, CheckpointMeta, ModelSpec, ResNetRs};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn randomise(vs: &VarStore) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, var) in &vars {
            let mut v = var.shallow_clone();
            let prefix = name.rsplit_once('.').map_or("", |p| p.0);
            let is_bn = vars.contains_key(&format!("{prefix}.running_mean"));
            let size = v.size();
            let fresh = if name.ends_with("running_var") {
                Tensor::rand(&size, (Kind::Float, Device::Cpu)) + 0.5
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                Tensor::randn(&size, (Kind::Float, Device::Cpu)) * 0.1
            } else if name == "fc.weight" {
                // Larger than the 0.01 init, so logits are far from zero.
                Tensor::randn(&size, (Kind::Float, Device::Cpu)) * 0.2
            } else if is_bn {
                Tensor::rand(&size, (Kind::Float, Device::Cpu)) * 0.5 + 0.5
            } else {
                continue;
            };
            v.copy_(&fresh);
        }
    });
}

fn meta(config: &selftrain_model::ModelConfig, size: usize) -> CheckpointMeta {
    CheckpointMeta {
        model: config.clone(),
        class_names: (0..config.num_classes).map(|i| format!("class-{i}")).collect(),
        preprocess: Preprocess {
            channels: config.in_channels as usize,
            height: size,
            width: size,
            mean: vec![0.5; config.in_channels as usize],
            std: vec![0.25; config.in_channels as usize],
            resize: "none".into(),
        },
        role: "test".into(),
    }
}

/// Max |tch - onnxruntime| over a random batch; also returns the session's
/// metadata.
fn compare(
    spec: ModelSpec,
    channels: i64,
    classes: i64,
    size: i64,
    batch: i64,
    options: &ExportOptions,
) -> (f64, HashMap<String, String>) {
    tch::manual_seed(7);
    let config = spec.resolve(channels, classes).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = ResNetRs::new(&vs.root(), &config);
    randomise(&vs);
    let x = Tensor::randn([batch, channels, size, size], (Kind::Float, Device::Cpu));
    let mut want = tch::no_grad(|| model.forward_t(&x, false));
    if options.output == OutputKind::Probabilities {
        want = want.softmax(-1, Kind::Float);
    }
    let bytes = export_bytes(&model, &meta(&config, size as usize), "0", options).unwrap();

    let env = selftrain_label::init_runtime(None).unwrap();
    let mut session = Session::builder(env).unwrap().commit_from_memory(&bytes).unwrap();
    let metadata = session.metadata().unwrap();
    let custom: HashMap<String, String> =
        metadata.custom_keys().unwrap().into_iter().map(|k| (k.clone(), metadata.custom(&k).unwrap())).collect();
    drop(metadata);
    let input = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
    let shape = [batch as usize, channels as usize, size as usize, size as usize];
    let outputs = session.run(ort::inputs!["input" => OrtTensor::from_array((shape, input)).unwrap()]).unwrap();
    let (out_shape, got) = outputs[0].try_extract_tensor::<f32>().unwrap();
    assert_eq!(out_shape.iter().copied().collect::<Vec<_>>(), vec![batch, classes]);
    let got = Tensor::from_slice(got).view([batch, classes]);
    let diff = f64::try_from((got - &want).abs().max()).unwrap();
    let scale = f64::try_from(want.abs().max()).unwrap();
    eprintln!("{}: max abs difference {diff:.3e}, max abs output {scale:.3e}", config.name);
    assert!(scale > 1e-3, "outputs are trivially small ({scale}); the test would prove nothing");
    (diff, custom)
}

fn small(activation: Activation) -> ModelSpec {
    let mut spec = ModelSpec::named("resnet-rs-50");
    spec.depth = Some([1, 2, 1, 1]);
    spec.width = Some(0.25);
    spec.small_input = Some(true);
    spec.activation = Some(activation);
    spec
}

#[test]
fn small_member_matches_onnx_runtime_folded_and_unfolded() {
    // 28 px: the shortcut pools see 14 -> 7 -> 4 (odd size, ceil mode).
    let (diff, meta) = compare(small(Activation::Relu), 1, 10, 28, 4, &ExportOptions::default());
    assert!(diff <= 1e-4, "max abs difference {diff}");
    assert_eq!(meta[keys::ONNX_OUTPUT_KIND], "logits");
    assert!(meta[keys::ONNX_CLASS_NAMES].contains("class-9"));
    let pre: Preprocess = serde_json::from_str(&meta[keys::ONNX_PREPROCESS]).unwrap();
    assert_eq!((pre.height, pre.width, pre.channels), (28, 28, 1));

    let keep = ExportOptions { fold_batch_norm: false, output: OutputKind::Probabilities, ..Default::default() };
    let (diff, _) = compare(small(Activation::Silu), 3, 7, 30, 3, &keep);
    assert!(diff <= 1e-4, "max abs difference {diff} (unfolded BN, SiLU, probabilities)");
}

#[test]
fn resnet_rs_50_at_160_px_matches_onnx_runtime() {
    let (diff, _) = compare(ModelSpec::named("resnet-rs-50"), 3, 1000, 160, 2, &ExportOptions::default());
    assert!(diff <= 1e-4, "max abs difference {diff}");
}

#[test]
fn fp16_weights_in_an_external_data_file_load_and_stay_close() {
    tch::manual_seed(3);
    let config = small(Activation::Relu).resolve(1, 10).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = ResNetRs::new(&vs.root(), &config);
    randomise(&vs);
    let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let want = tch::no_grad(|| model.forward_t(&x, false));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let options = ExportOptions { fp16_weights: true, external_data: ExternalData::Always, ..Default::default() };
    selftrain_model::onnx::export(&model, &meta(&config, 28), "0", &options, &path).unwrap();
    let data = dir.path().join("m.onnx.data");
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000, "weights are not inside the .onnx file");
    assert!(std::fs::metadata(&data).unwrap().len() as i64 >= 2 * params, "two bytes per weight at least");

    let env = selftrain_label::init_runtime(None).unwrap();
    let mut session = Session::builder(env).unwrap().commit_from_file(&path).unwrap();
    let input = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
    let outputs =
        session.run(ort::inputs!["input" => OrtTensor::from_array(([4usize, 1, 28, 28], input)).unwrap()]).unwrap();
    let (_, got) = outputs[0].try_extract_tensor::<f32>().unwrap();
    let diff = f64::try_from((Tensor::from_slice(got).view([4, 10]) - &want).abs().max()).unwrap();
    let scale = f64::try_from(want.abs().max()).unwrap();
    eprintln!("fp16 weights: max abs difference {diff:.3e}, max abs output {scale:.3e}");
    assert!(diff <= 1e-2 * scale.max(1.0), "max abs difference {diff} (fp16 weights)");
    assert!(diff > 0.0, "fp16 rounding should show");
}
