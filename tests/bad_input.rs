//! Bad input stops with a message naming the file or key and what was
//! expected, and leaves no half-written output under a final name.

mod common;

use common::*;
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_model::{CheckpointMeta, ModelSpec, ResNetRs};

fn spec_with_root(dir: &std::path::Path, root: &str) -> std::path::PathBuf {
    let real =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data-specs/fashion-mnist.toml"))
            .unwrap();
    let path = dir.join("spec.toml");
    std::fs::write(
        &path,
        real.replace("root = \"/usr/share/datasets/fashion-mnist\"", &format!("root = \"{root}\""))
            .replace("root_env = \"SELFTRAIN_FASHION_MNIST_DIR\"\n", ""),
    )
    .unwrap();
    path
}

#[test]
fn missing_data_set_names_the_file_and_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with_root(dir.path(), "/nonexistent/fashion");
    let config = tiny_train_config(dir.path(), &spec, "");
    let err = selftrain_err(&["train", "--config", s(&config), "--out", s(&dir.path().join("o")), "--device", "cpu"]);
    assert!(err.contains("/nonexistent/fashion/train-images-idx3-ubyte.gz"), "{err}");
    assert!(err.contains("apt-get install dataset-fashion-mnist"), "{err}");
    assert!(!dir.path().join("o/checkpoint.safetensors").exists());
}

#[test]
fn truncated_or_inconsistent_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 200, 50);
    let config = tiny_train_config(d, &spec, "");
    // A gzip stream cut in half.
    let images = d.join("train-images.gz");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let err = selftrain_err(&["train", "--config", s(&config), "--out", s(&d.join("o")), "--device", "cpu"]);
    assert!(err.contains("train-images.gz") && err.contains("truncated"), "{err}");

    // Labels that do not match the image count.
    let _ = tiny_fashion_mnist(d, 200, 50);
    std::fs::copy(d.join("t10k-labels.gz"), d.join("train-labels.gz")).unwrap();
    let err = selftrain_err(&["train", "--config", s(&config), "--out", s(&d.join("o")), "--device", "cpu"]);
    assert!(err.contains("train-labels.gz") && err.contains("expected 200 labels"), "{err}");
    assert!(!d.join("o/checkpoint.safetensors").exists());
}

#[test]
fn config_and_pipeline_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 200, 50);
    let config = tiny_train_config(d, &spec, "epochz = 3");
    let err = selftrain_err(&["train", "--config", s(&config), "--out", s(&d.join("o"))]);
    assert!(err.contains("train.toml") && err.contains("epochz"), "{err}");

    let config = tiny_train_config(d, &spec, "");
    let text = std::fs::read_to_string(&config).unwrap().replace("batch_size = 32", "batch_size = \"many\"");
    std::fs::write(&config, text).unwrap();
    let err = selftrain_err(&["train", "--config", s(&config), "--out", s(&d.join("o"))]);
    assert!(err.contains("batch_size") && err.contains("expected usize"), "{err}");

    let real = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/fashion-mnist-quick.toml"),
    )
    .unwrap();
    let pipeline = d.join("p.toml");
    std::fs::write(&pipeline, real.replace("rounds = 1", "rounds = \"two\"")).unwrap();
    let err = selftrain_err(&["run", s(&pipeline), "--work", s(&d.join("w"))]);
    assert!(err.contains("p.toml") && err.contains("rounds"), "{err}");
    std::fs::write(&pipeline, real.replace("[filter]\n", "[filter]\nthreshhold = 0.5\n")).unwrap();
    let err = selftrain_err(&["run", s(&pipeline), "--work", s(&d.join("w"))]);
    assert!(err.contains("threshhold"), "{err}");
    assert!(!d.join("w/teacher").exists(), "nothing ran");

    let err = selftrain_err(&[
        "label",
        "--model",
        "m.onnx",
        "--spec",
        s(&spec),
        "--subset",
        "unlabelled:ten:0",
        "--out",
        "x",
    ]);
    assert!(err.contains("unlabelled:ten:0"), "{err}");
}

#[test]
fn missing_or_damaged_checkpoints_and_models_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 200, 50);
    let err = selftrain_err(&["export", "--checkpoint", s(&d.join("nope.safetensors")), "--out", s(&d.join("m.onnx"))]);
    assert!(err.contains("nope.safetensors"), "{err}");
    assert!(!d.join("m.onnx").exists());

    std::fs::write(d.join("junk.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let err =
        selftrain_err(&["eval", "--model", s(&d.join("junk.safetensors")), "--spec", s(&spec), "--split", "test"]);
    assert!(err.contains("junk.safetensors"), "{err}");

    std::fs::write(d.join("junk.onnx"), b"not a protobuf at all").unwrap();
    let err =
        selftrain_err(&["label", "--model", s(&d.join("junk.onnx")), "--spec", s(&spec), "--out", s(&d.join("s"))]);
    assert!(err.contains("junk.onnx"), "{err}");
    assert!(!d.join("s").join("part-00000-of-00001.parquet").exists());
}

#[test]
fn a_model_with_the_wrong_class_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 200, 50);
    // A 5-class model exported the normal way.
    let mut model_spec = ModelSpec::named("resnet-rs-50");
    model_spec.depth = Some([1, 1, 1, 1]);
    model_spec.width = Some(0.125);
    model_spec.small_input = Some(true);
    let config = model_spec.resolve(1, 5).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = ResNetRs::new(&vs.root(), &config);
    let meta = CheckpointMeta {
        model: config,
        class_names: (0..5).map(|i| i.to_string()).collect(),
        preprocess: Preprocess {
            channels: 1,
            height: 28,
            width: 28,
            mean: vec![0.3],
            std: vec![0.35],
            resize: "none".into(),
        },
        role: "test".into(),
    };
    let ckpt = d.join("five.safetensors");
    selftrain_model::checkpoint::save(&vs, &meta, &ckpt).unwrap();
    let onnx = d.join("five.onnx");
    selftrain_ok(&["export", "--checkpoint", s(&ckpt), "--out", s(&onnx)]);
    let err = selftrain_err(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&d.join("s"))]);
    assert!(err.contains("five.onnx") && err.contains("5 classes") && err.contains("10"), "{err}");
    let err = selftrain_err(&["eval", "--model", s(&onnx), "--spec", s(&spec), "--split", "test"]);
    assert!(err.contains("five.onnx") && err.contains("5 classes"), "{err}");
}

#[test]
fn interrupted_and_incomplete_shards_are_never_taken_for_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 300, 50);
    let config = tiny_train_config(d, &spec, "");
    selftrain_ok(&["train", "--config", s(&config), "--out", s(&d.join("t")), "--device", "cpu"]);
    let onnx = d.join("t.onnx");
    selftrain_ok(&["export", "--checkpoint", s(&d.join("t/checkpoint.safetensors")), "--out", s(&onnx)]);
    let shards = d.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    // What an interrupted task leaves: a temporary file, never the final name.
    std::fs::write(shards.join(".part-00000-of-00003.parquet.tmp-999"), b"PAR1 half").unwrap();
    let label = |index: &str| {
        selftrain(&[
            "label",
            "--model",
            s(&onnx),
            "--spec",
            s(&spec),
            "--subset",
            "unlabelled:10:0",
            "--out",
            s(&shards),
            "--num-shards",
            "3",
            "--shard-index",
            index,
        ])
    };
    assert!(label("0").status.success());
    assert!(label("2").status.success());
    // Shard 1 never ran: the filter refuses and names it.
    let err = selftrain_err(&["filter", "--shards", s(&shards), "--out", s(&d.join("f.parquet")), "--per-class", "5"]);
    assert!(err.contains("part-00001-of-00003.parquet") && err.contains("missing"), "{err}");
    assert!(!d.join("f.parquet").exists());
    // A truncated file under a final name is reported, not reused or overwritten.
    let good = std::fs::read(shards.join("part-00000-of-00003.parquet")).unwrap();
    std::fs::write(shards.join("part-00001-of-00003.parquet"), &good[..good.len() / 2]).unwrap();
    let out = label("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("part-00001-of-00003.parquet") && err.contains("not a complete"),
        "{err}"
    );
    let err = selftrain_err(&["filter", "--shards", s(&shards), "--out", s(&d.join("f.parquet")), "--per-class", "5"]);
    assert!(err.contains("part-00001-of-00003.parquet"), "{err}");
    // --force rewrites it; then the filter runs.
    let out = selftrain(&[
        "label",
        "--model",
        s(&onnx),
        "--spec",
        s(&spec),
        "--subset",
        "unlabelled:10:0",
        "--out",
        s(&shards),
        "--num-shards",
        "3",
        "--shard-index",
        "1",
        "--force",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    selftrain_ok(&[
        "filter",
        "--shards",
        s(&shards),
        "--out",
        s(&d.join("f.parquet")),
        "--per-class",
        "5",
        "--threshold",
        "0",
    ]);
    // A student pointed at missing pseudo-labels writes no checkpoint.
    let student = d.join("student.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&student, format!("{text}\n[pseudo]\nlabels = \"{}\"\n", d.join("absent.parquet").display()))
        .unwrap();
    let err = selftrain_err(&["train", "--config", s(&student), "--out", s(&d.join("st")), "--device", "cpu"]);
    assert!(err.contains("absent.parquet"), "{err}");
    assert!(!d.join("st/checkpoint.safetensors").exists());
}
