//! Every stage for real on a tiny Fashion-MNIST (a few hundred images, the
//! smallest model, one short epoch), through the `selftrain` binary, checking
//! what each stage wrote.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::File;

use common::*;
use polars::prelude::*;

fn read_frame(path: &std::path::Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap()).finish().unwrap()
}

#[test]
fn teacher_export_label_filter_student() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 400, 200);
    let config = tiny_train_config(d, &spec, "");

    // Teacher: 10 labelled images per class.
    let out = selftrain_ok(&["train", "--config", s(&config), "--out", s(&d.join("teacher")), "--device", "cpu"]);
    assert!(out.contains("test accuracy: "), "{out}");
    let ckpt = d.join("teacher/checkpoint.safetensors");
    assert!(ckpt.is_file() && d.join("teacher/report.json").is_file() && d.join("teacher/config.toml").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("teacher/report.json")).unwrap()).unwrap();
    assert_eq!(report["labelled_images"], 100);
    assert_eq!(report["test"]["total"], 200);

    // Export, and the same accuracy from the ONNX model as from the checkpoint.
    let onnx = d.join("teacher.onnx");
    selftrain_ok(&["export", "--checkpoint", s(&ckpt), "--out", s(&onnx)]);
    let acc_ckpt =
        selftrain_ok(&["eval", "--model", s(&ckpt), "--spec", s(&spec), "--split", "test", "--device", "cpu"]);
    let acc_onnx = selftrain_ok(&["eval", "--model", s(&onnx), "--spec", s(&spec), "--split", "test"]);
    assert_eq!(acc_ckpt, acc_onnx);

    // Label: two shards covering the 300 unlabelled images once.
    let shards = d.join("shards");
    for i in ["0", "1"] {
        selftrain_ok(&[
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
            "2",
            "--shard-index",
            i,
            "--topk",
            "3",
        ]);
    }
    let mut ids = HashSet::new();
    for i in 0..2 {
        let path = shards.join(format!("part-0000{i}-of-00002.parquet"));
        let df = read_frame(&path);
        let schema = df.schema();
        assert_eq!(schema.get("image_id"), Some(&DataType::String));
        assert_eq!(schema.get("label"), Some(&DataType::Int32));
        assert_eq!(schema.get("confidence"), Some(&DataType::Float32));
        assert_eq!(schema.get("topk_classes"), Some(&DataType::List(Box::new(DataType::Int32))));
        assert_eq!(schema.get("topk_probs"), Some(&DataType::List(Box::new(DataType::Float32))));
        assert_eq!(schema.get("teacher"), Some(&DataType::String));
        let meta = selftrain_label::read_shard_meta(&path).unwrap();
        assert_eq!((meta.shard_index, meta.num_shards, meta.num_rows, meta.topk), (i, 2, df.height(), 3));
        assert_eq!(meta.class_names.len(), 10);
        // The top-1 columns agree with the top-k lists, probabilities descend.
        let conf = df.column("confidence").unwrap().f32().unwrap().clone();
        let probs = df.column("topk_probs").unwrap().list().unwrap().clone();
        for (c, p) in conf.into_no_null_iter().zip(probs.amortized_iter()) {
            let p: Vec<f32> = p.unwrap().as_ref().f32().unwrap().into_no_null_iter().collect();
            assert_eq!(p.len(), 3);
            assert_eq!(p[0], c);
            assert!(p[0] >= p[1] && p[1] >= p[2]);
        }
        for id in df.column("image_id").unwrap().str().unwrap().iter().flatten() {
            assert!(ids.insert(id.to_string()), "{id} in two shards");
        }
    }
    assert_eq!(ids.len(), 300, "one row per unlabelled image");
    // No labelled image reached the label stage.
    let labelled: HashSet<String> = {
        let spec = selftrain_data::DataSpec::load(&spec).unwrap();
        let set = selftrain_data::ImageSet::load_split(&spec, "train").unwrap();
        "labelled:10:0".parse::<selftrain_data::Subset>().unwrap().apply(&set).unwrap().ids.into_iter().collect()
    };
    assert!(ids.is_disjoint(&labelled));

    // Rerunning a finished shard keeps it.
    let again = selftrain_ok(&[
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
        "2",
        "--shard-index",
        "0",
        "--topk",
        "3",
    ]);
    assert!(again.contains("already complete"), "{again}");

    // Filter: threshold and K as configured.
    let all = {
        let mut a = read_frame(&shards.join("part-00000-of-00002.parquet"));
        a.vstack_mut(&read_frame(&shards.join("part-00001-of-00002.parquet"))).unwrap();
        a
    };
    let confs: Vec<f32> = all.column("confidence").unwrap().f32().unwrap().into_no_null_iter().collect();
    let mut sorted = confs.clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = sorted[sorted.len() / 2]; // keeps about half
    let k = 12;
    let filtered = d.join("pseudo.parquet");
    selftrain_ok(&[
        "filter",
        "--shards",
        s(&shards),
        "--out",
        s(&filtered),
        "--threshold",
        &threshold.to_string(),
        "--per-class",
        &k.to_string(),
    ]);
    let f = read_frame(&filtered);
    let labels: Vec<i32> = f.column("label").unwrap().i32().unwrap().into_no_null_iter().collect();
    let kept_conf: Vec<f32> = f.column("confidence").unwrap().f32().unwrap().into_no_null_iter().collect();
    let copies: Vec<i32> = f.column("copy").unwrap().i32().unwrap().into_no_null_iter().collect();
    let kept_ids: Vec<&str> = f.column("image_id").unwrap().str().unwrap().iter().flatten().collect();
    assert!(kept_conf.iter().all(|c| *c >= threshold));
    let all_labels: Vec<i32> = all.column("label").unwrap().i32().unwrap().into_no_null_iter().collect();
    for class in 0..10 {
        let confident: Vec<f32> =
            (0..confs.len()).filter(|&i| all_labels[i] == class && confs[i] >= threshold).map(|i| confs[i]).collect();
        let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        let unique: HashSet<&str> = rows.iter().map(|&i| kept_ids[i]).collect();
        if confident.is_empty() {
            assert!(rows.is_empty());
            continue;
        }
        assert_eq!(rows.len(), k, "class {class}: K rows after balancing");
        assert_eq!(unique.len(), confident.len().min(k), "class {class}");
        assert_eq!(rows.iter().filter(|&&i| copies[i] == 0).count(), unique.len());
        // The most confident were kept.
        let min_kept = rows.iter().map(|&i| kept_conf[i]).fold(f32::INFINITY, f32::min);
        let mut c = confident.clone();
        c.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(min_kept, c[unique.len() - 1]);
    }
    assert!(d.join("pseudo.report.json").is_file());

    // Student on labelled + pseudo-labelled images.
    let student_config = d.join("student.toml");
    let teacher_text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &student_config,
        format!(
            "role = \"student\"\n{teacher_text}\n[pseudo]\nlabels = \"{}\"\ntargets = \"hard\"\nratio = 2\n",
            filtered.display()
        )
        .replace("epochs = 1", "epochs = 1\naugment = \"randaugment:2:9\""),
    )
    .unwrap();
    let out =
        selftrain_ok(&["train", "--config", s(&student_config), "--out", s(&d.join("student")), "--device", "cpu"]);
    assert!(out.contains("test accuracy: "), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("student/report.json")).unwrap()).unwrap();
    assert_eq!(report["pseudo_labelled_rows"].as_u64().unwrap() as usize, f.height());
    let truth: HashMap<String, i64> = HashMap::new();
    assert!(selftrain_filter::label_accuracy(&f, &truth).unwrap().1 == 0);
}
