//! Weights move between timm and selftrain by name: a state dict saved by
//! timm (tests/fixtures/timm/make_fixture.py, seed and versions inside)
//! loads into our model and gives timm's logits; our checkpoints carry
//! exactly timm's keys and shapes, so timm loads them strictly.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_model::{Checkpoint, CheckpointMeta, ModelSpec, ResNetRs};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/timm").join(name)
}

/// The fixture's architecture in our terms.
fn spec() -> ModelSpec {
    let mut spec = ModelSpec::named("resnet-rs-50");
    spec.depth = Some([1, 2, 1, 1]);
    spec.stem_widths = Some([8, 8, 16]);
    spec.stage_widths = Some([8, 16, 24, 32]);
    spec
}

fn fixture_io() -> (Tensor, Tensor) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-resnetrs.json")).unwrap()).unwrap();
    let shape: Vec<i64> = json["input_shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let input: Vec<f32> = json["input"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let logits: Vec<f32> = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    (Tensor::from_slice(&input).view(shape.as_slice()), Tensor::from_slice(&logits).view([2, 5]))
}

#[test]
fn timm_state_dict_loads_and_reproduces_timm_logits() {
    let config = spec().resolve(3, 5).unwrap();
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let model = ResNetRs::new(&vs.root(), &config);
    let timm = Checkpoint::read(&fixture("tiny-resnetrs.safetensors")).unwrap();
    assert!(timm.meta.is_none(), "a plain timm state dict");
    timm.load_into(&mut vs).unwrap();
    let (x, want) = fixture_io();
    let got = tch::no_grad(|| model.forward_t(&x, false));
    let diff = f64::try_from((got - &want).abs().max()).unwrap();
    eprintln!("timm vs selftrain: max abs difference {diff:.3e}");
    assert!(diff <= 1e-4, "max abs difference {diff}");

    // Our checkpoint of the same weights has exactly timm's keys and shapes
    // (num_batches_tracked included), so timm's strict load accepts it.
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.safetensors");
    let meta = CheckpointMeta {
        model: config,
        class_names: (0..5).map(|i| i.to_string()).collect(),
        preprocess: Preprocess {
            channels: 3,
            height: 32,
            width: 32,
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
            resize: "none".into(),
        },
        role: "test".into(),
    };
    selftrain_model::checkpoint::save(&vs, &meta, &ours).unwrap();
    let ours = Checkpoint::read(&ours).unwrap();
    let shapes = |c: &Checkpoint| c.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&ours), shapes(&timm));
    for (key, t) in &timm.tensors {
        if !key.ends_with("num_batches_tracked") {
            assert_eq!(ours.tensors[key].data, t.data, "{key} round-trips bit for bit");
        }
    }
}

#[test]
fn a_timm_checkpoint_exports_and_evaluates_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model_spec = d.join("model.toml");
    std::fs::write(
        &model_spec,
        "arch = \"resnet-rs-50\"\ndepth = [1, 2, 1, 1]\nstem_widths = [8, 8, 16]\nstage_widths = [8, 16, 24, 32]\n",
    )
    .unwrap();
    let onnx = d.join("timm.onnx");
    let ckpt = fixture("tiny-resnetrs.safetensors");
    // Without a description, the error says what is needed.
    let err = selftrain_err(&["export", "--checkpoint", s(&ckpt), "--out", s(&onnx)]);
    assert!(err.contains("tiny-resnetrs.safetensors") && err.contains("architecture"), "{err}");
    selftrain_ok(&[
        "export",
        "--checkpoint",
        s(&ckpt),
        "--out",
        s(&onnx),
        "--model-spec",
        s(&model_spec),
        "--num-classes",
        "5",
        "--resolution",
        "32",
    ]);
    let (x, want) = fixture_io();
    let env = selftrain_label::init_runtime(None).unwrap();
    let mut session = ort::session::Session::builder(env).unwrap().commit_from_file(&onnx).unwrap();
    let input = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
    let outputs = session
        .run(ort::inputs!["input" => ort::value::Tensor::from_array(([2usize, 3, 32, 32], input)).unwrap()])
        .unwrap();
    let (_, got) = outputs[0].try_extract_tensor::<f32>().unwrap();
    let diff = f64::try_from((Tensor::from_slice(got).view([2, 5]) - want).abs().max().to_kind(Kind::Double)).unwrap();
    assert!(diff <= 1e-4, "max abs difference {diff}");
}
