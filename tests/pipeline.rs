//! `selftrain run` on a tiny pipeline: two Noisy Student rounds, the summary,
//! the stage cache, and Python clients reading every output.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn tiny_pipeline(dir: &Path, spec: &Path) -> std::path::PathBuf {
    let real =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/fashion-mnist-quick.toml"))
            .unwrap();
    let text = real
        .replace("name = \"fashion-mnist-quick\"", "name = \"tiny\"")
        .replace("rounds = 1", "rounds = 2")
        .replace("spec = \"../data-specs/fashion-mnist.toml\"", &format!("spec = \"{}\"", spec.display()))
        .replace("labelled = \"labelled:100:0\"", "labelled = \"labelled:10:0\"")
        .replace("width = 0.25", "width = 0.125")
        .replace("width = 0.5", "width = 0.125")
        .replace("depth = [1, 2, 2, 1]", "depth = [1, 1, 1, 1]")
        .replace("num_shards = 4", "num_shards = 3")
        .replace("per_class = 2000", "per_class = 20");
    // One epoch for every stage, whatever the real pipeline says.
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("epochs = ") { "epochs = 1\n".to_string() } else { format!("{l}\n") })
        .collect();
    assert!(text.contains("rounds = 2") && text.contains("per_class = 20"), "pipeline template changed");
    assert_eq!(text.lines().filter(|l| *l == "epochs = 1").count(), 2, "pipeline template changed");
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_rounds_summary_cache_and_python_readers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = tiny_fashion_mnist(d, 400, 100);
    let pipeline = tiny_pipeline(d, &spec);
    let work = d.join("work");
    let out = selftrain_ok(&["run", s(&pipeline), "--work", s(&work), "--device", "cpu"]);
    assert!(out.contains("teacher test accuracy: ") && out.contains("student test accuracy: "), "{out}");
    assert!(out.contains("round 2 student"), "{out}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rounds"].as_array().unwrap().len(), 2);
    let round = &summary["rounds"][0];
    assert_eq!(round["pseudo_labelled_images"], 300, "every unlabelled image was labelled and compared");
    let acc = round["pseudo_label_accuracy_all"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(round["student"]["test_accuracy"].as_f64().is_some());
    assert_eq!(round["kept_per_class"].as_array().unwrap().len(), 10);
    assert!(work.join("pipeline.toml").is_file());
    // Round 2's teacher is round 1's student.
    let onnx2 = std::fs::read(work.join("round-2/export/teacher.onnx")).unwrap();
    let onnx1 = std::fs::read(work.join("round-1/export/teacher.onnx")).unwrap();
    assert_ne!(onnx1, onnx2);

    // A second run reuses every stage.
    let before = std::fs::metadata(work.join("round-2/student/checkpoint.safetensors")).unwrap().modified().unwrap();
    let again = selftrain(&["run", s(&pipeline), "--work", s(&work), "--device", "cpu"]);
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    assert_eq!(log.matches("reused").count(), 9, "{log}");
    let after = std::fs::metadata(work.join("round-2/student/checkpoint.safetensors")).unwrap().modified().unwrap();
    assert_eq!(before, after);
    // Changing the filter re-runs the filter and everything after it only.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace("per_class = 20", "per_class = 15");
    std::fs::write(&pipeline, text).unwrap();
    let third = selftrain(&["run", s(&pipeline), "--work", s(&work), "--device", "cpu", "--rounds", "1"]);
    assert!(third.status.success());
    let log = String::from_utf8_lossy(&third.stderr);
    assert!(log.contains("teacher: up to date") && log.contains("label: up to date"), "{log}");
    assert!(!log.contains("filter: up to date"), "{log}");

    // Python clients read it all.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_outputs.py");
    let out = Command::new(&python).arg(&script).arg(&work).arg(d).output().expect("run scripts/setup.sh first");
    assert!(
        out.status.success(),
        "python readers disagree:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
