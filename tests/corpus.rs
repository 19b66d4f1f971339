//! Corpus formats end to end: folders, WebDataset tar shards and Parquet
//! with image bytes, built inside the test from real Fashion-MNIST images,
//! with planted bad files. Bad samples are skipped with a record (id,
//! location, reason) and counted; they never stop the job. A spec that points
//! at nothing, or whose class folders disagree with its class list, stops
//! with an error naming the problem.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use common::*;
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_model::{CheckpointMeta, ModelSpec, ResNetRs};

const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A spec for a corpus whose files are under `dir`.
fn corpus_spec(dir: &Path, name: &str, format: &str, images: &str, extra: &str, classes: &[String]) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let classes: Vec<String> = classes.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
format = "{format}"
root = "{}"
channels = 1
height = 28
width = 28
mean = [0.2860]
std = [0.3530]
classes = [{}]
{extra}
[splits.train]
images = "{images}"
"#,
            dir.display(),
            classes.join(", ")
        ),
    )
    .unwrap();
    path
}

fn classes() -> Vec<String> {
    CLASSES.map(String::from).to_vec()
}

/// A random-init tiny 10-class model exported to ONNX (the test is about
/// data, not accuracy).
fn tiny_onnx(dir: &Path) -> PathBuf {
    let mut spec = ModelSpec::named("resnet-rs-50");
    spec.depth = Some([1, 1, 1, 1]);
    spec.width = Some(0.125);
    spec.small_input = Some(true);
    let config = spec.resolve(1, 10).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = ResNetRs::new(&vs.root(), &config);
    let meta = CheckpointMeta {
        model: config,
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        preprocess: Preprocess {
            channels: 1,
            height: 28,
            width: 28,
            mean: vec![0.286],
            std: vec![0.353],
            resize: "bicubic-centre-crop:1".into(),
        },
        role: "test".into(),
    };
    let ckpt = dir.join("tiny.safetensors");
    selftrain_model::checkpoint::save(&vs, &meta, &ckpt).unwrap();
    let onnx = dir.join("tiny.onnx");
    selftrain_ok(&["export", "--checkpoint", s(&ckpt), "--out", s(&onnx)]);
    onnx
}

fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// Writes bad files and odd-but-valid images into `folder`; returns the
/// number of bad ones.
fn plant(folder: &Path, good_jpeg: &[u8]) -> usize {
    std::fs::write(folder.join("zero.jpg"), b"").unwrap();
    std::fs::write(folder.join("half.jpg"), &good_jpeg[..good_jpeg.len() / 2]).unwrap();
    std::fs::write(folder.join("notes.jpg"), b"this is a text file, not a picture\n").unwrap();
    // A BMP file's signature and header (a format the reader does not take).
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0u8; 52]);
    std::fs::write(folder.join("old.bmp"), bmp).unwrap();
    // Valid images in other colour types and sizes: all must come out 1x28x28.
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(40, 30, |x, y| {
        image::Rgba([x as u8 * 6, y as u8 * 8, 90, 128])
    }));
    std::fs::write(folder.join("rgba.png"), png(rgba)).unwrap();
    let deep = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(20, 50, |x, y| {
        image::Luma([(x * y * 60) as u16])
    }));
    std::fs::write(folder.join("deep.png"), png(deep)).unwrap();
    4
}

fn first_jpeg(dir: &Path) -> Vec<u8> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jpg") {
                return std::fs::read(p).unwrap();
            }
        }
    }
    panic!("no jpeg under {}", dir.display());
}

/// Image ids of every shard in `dir` (read back with arrow-rs's Parquet
/// reader), sorted.
fn shard_ids(dir: &Path) -> Vec<String> {
    use arrow_array::cast::AsArray;
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&p).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("image_id").unwrap().as_string::<i32>().clone();
                ids.extend(col.iter().map(|v| v.unwrap().to_string()));
            }
        }
    }
    ids.sort();
    ids
}

fn skipped_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".skipped.jsonl") {
            for line in std::fs::read_to_string(p).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out
}

fn assert_reasons(records: &[serde_json::Value], wanted: &[(&str, &str)]) {
    for (id_part, reason_part) in wanted {
        let found = records.iter().any(|r| {
            r["id"].as_str().unwrap().contains(id_part) && r["reason"].as_str().unwrap().contains(reason_part)
        });
        assert!(found, "no record for {id_part} with reason {reason_part:?} in {records:#?}");
    }
}

#[test]
fn folder_corpus_with_planted_bad_files_is_labelled_and_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = tiny_fashion_mnist(d, 60, 10);
    let onnx = tiny_onnx(d);
    let classes = classes();

    // A labelled class-folder corpus: 60 JPEGs at 36 px (resized on read).
    // Folders are named after the classes, `/` written as `_`.
    let folders = d.join("folders");
    let out = selftrain_ok(&[
        "data",
        "synth",
        "--spec",
        s(&tiny),
        "--count",
        "60",
        "--size",
        "36",
        "--layout",
        "folder",
        "--out",
        s(&folders),
    ]);
    assert!(out.contains("60 images"), "{out}");
    assert!(folders.join("T-shirt_top").is_dir() && folders.join("Ankle boot").is_dir());
    let bad = plant(&folders.join(&classes[3]), &first_jpeg(&folders));
    let spec = corpus_spec(d, "folders", "folder", "folders", "", &classes);

    let shards = d.join("shards");
    let out = selftrain_ok(&[
        "label",
        "--model",
        s(&onnx),
        "--spec",
        s(&spec),
        "--out",
        s(&shards),
        "--num-shards",
        "3",
        "--workers",
        "2",
    ]);
    let ids = shard_ids(&shards);
    assert_eq!(ids.len(), 62, "60 synthesised + 2 odd-but-valid images; stdout:\n{out}");
    let records = skipped_records(&shards);
    assert_eq!(records.len(), bad, "{records:#?}");
    assert_reasons(
        &records,
        &[
            ("zero.jpg", "zero-byte"),
            ("half.jpg", "cannot decode"),
            ("notes.jpg", "not a recognised"),
            ("old.bmp", "unsupported"),
        ],
    );
    for r in &records {
        assert!(r["location"].as_str().unwrap().contains("folders"), "{r}");
    }
    let total_skipped: usize = out
        .lines()
        .filter_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" skipped)")))
        .map(|n| n.parse::<usize>().unwrap())
        .sum();
    assert_eq!(total_skipped, bad, "per-shard skipped counts in the summary:\n{out}");
    // Ids are paths relative to the split folder: stable across runs.
    assert!(ids.contains(&format!("{}/rgba.png", classes[3])), "{ids:?}");

    // A rerun keeps every shard (same listing, same teacher).
    let again =
        selftrain_ok(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&shards), "--num-shards", "3"]);
    assert_eq!(again.matches("already complete").count(), 3, "{again}");

    // Evaluation reads the labels from the folders and leaves out the bad files.
    let out = selftrain_ok(&["eval", "--model", s(&onnx), "--spec", s(&spec), "--split", "train"]);
    assert!(out.contains("/62)") && out.contains(&format!("{bad} image(s) skipped")), "{out}");

    // Class folders that disagree with the class list stop with both sides named.
    std::fs::create_dir(folders.join("Bogus")).unwrap();
    let err = selftrain_err(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&d.join("s2"))]);
    assert!(err.contains("Bogus") && err.contains("folders.toml") && err.contains("class list"), "{err}");
    std::fs::remove_dir(folders.join("Bogus")).unwrap();
    std::fs::rename(folders.join("Ankle boot"), d.join("moved")).unwrap();
    let err = selftrain_err(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&d.join("s2"))]);
    assert!(err.contains(&classes[9]) && err.contains("without a folder"), "{err}");

    // A spec that points at nothing.
    let nothing = corpus_spec(d, "nothing", "folder", "no-such-folder", "", &classes);
    let err = selftrain_err(&["label", "--model", s(&onnx), "--spec", s(&nothing), "--out", s(&d.join("s3"))]);
    assert!(err.contains("no-such-folder") && err.contains("missing"), "{err}");
    std::fs::create_dir(d.join("empty")).unwrap();
    let empty = corpus_spec(d, "empty", "folder", "empty", "", &classes);
    let err = selftrain_err(&[
        "label",
        "--model",
        s(&onnx),
        "--spec",
        s(&empty),
        "--out",
        s(&d.join("s3")),
        "--split",
        "train",
    ]);
    assert!(err.contains("empty") && err.contains("class list"), "{err}");
    assert!(!d.join("s3").join("part-00000-of-00001.parquet").exists());
}

#[test]
fn tar_shards_with_a_truncated_shard_and_bad_members() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = tiny_fashion_mnist(d, 60, 10);
    let onnx = tiny_onnx(d);
    let tars = d.join("tars");
    let out = selftrain_ok(&[
        "data",
        "synth",
        "--spec",
        s(&tiny),
        "--count",
        "50",
        "--size",
        "28",
        "--layout",
        "tar",
        "--per-shard",
        "20",
        "--out",
        s(&tars),
    ]);
    assert!(out.contains("50 images in 3 files"), "{out}");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&tars).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    // A fourth shard with bad members, labels in .json, then cut off inside
    // its last member's data.
    let good = first_jpeg_in_tar(&names[0]);
    let extra = tars.join("zz-extra.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&extra).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, bytes).unwrap();
        };
        add("ok1.jpg", &good);
        add("ok1.json", br#"{"label": 4}"#);
        add("garbage.jpg", b"\x00\x01\x02 not an image");
        add("garbage.cls", b"2");
        add("nolabel.jpg", &good);
        add("biglabel.jpg", &good);
        add("biglabel.cls", b"17");
        add("orphan.cls", b"3");
        add("cut.jpg", &vec![0xAB; 5000]);
        add("cut.cls", b"1");
        b.finish().unwrap();
    }
    let bytes = std::fs::read(&extra).unwrap();
    // Keep the header of `cut.jpg` and 1000 of its 5000 bytes.
    let at = find(&bytes, b"cut.jpg").unwrap() + 512 + 1000;
    std::fs::write(&extra, &bytes[..at]).unwrap();

    let spec = corpus_spec(d, "tars", "tar", "tars", "", &classes());
    let shards = d.join("shards");
    selftrain_ok(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&shards), "--num-shards", "2"]);
    let ids = shard_ids(&shards);
    assert_eq!(ids.len(), 51, "50 synthesised + ok1");
    let records = skipped_records(&shards);
    assert_reasons(
        &records,
        &[
            ("zz-extra/garbage", "not a recognised"),
            ("zz-extra/nolabel", "no label"),
            ("zz-extra/biglabel", "outside"),
            ("zz-extra/orphan", "no image member"),
            ("zz-extra/cut", "truncated"),
        ],
    );
    assert_eq!(records.len(), 5, "{records:#?}");
    // Ids are `<shard stem>/<key>`.
    assert!(ids.iter().any(|i| i == "zz-extra/ok1"), "{ids:?}");

    // The same shards as an unlabelled corpus: labels are not read, so
    // `nolabel` and `biglabel` are images like any other.
    let unlabelled = corpus_spec(d, "tars-unlabelled", "tar", "tars", "", &classes()).to_path_buf();
    let text = std::fs::read_to_string(&unlabelled).unwrap() + "labelled = false\n";
    std::fs::write(&unlabelled, text).unwrap();
    let shards2 = d.join("shards2");
    selftrain_ok(&["label", "--model", s(&onnx), "--spec", s(&unlabelled), "--out", s(&shards2)]);
    assert_eq!(shard_ids(&shards2).len(), 53);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn first_jpeg_in_tar(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().ends_with(".jpg") {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("no jpeg in {}", path.display());
}

#[test]
fn parquet_with_image_bytes_and_a_null_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = tiny_fashion_mnist(d, 60, 10);
    let onnx = tiny_onnx(d);
    selftrain_ok(&[
        "data",
        "synth",
        "--spec",
        s(&tiny),
        "--count",
        "12",
        "--size",
        "28",
        "--layout",
        "tar",
        "--per-shard",
        "100",
        "--out",
        s(&d.join("t")),
    ]);
    let tar_path = std::fs::read_dir(d.join("t")).unwrap().next().unwrap().unwrap().path();
    let good = first_jpeg_in_tar(&tar_path);
    std::fs::create_dir(d.join("pq")).unwrap();
    let images: Vec<Option<&[u8]>> =
        vec![Some(&good), None, Some(b"nope".as_slice()), Some(&good), Some(&good[..good.len() / 3])];
    let batch = RecordBatch::try_from_iter(vec![
        ("img", Arc::new(BinaryArray::from(images)) as ArrayRef),
        ("key", Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])) as ArrayRef),
        ("y", Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(d.join("pq/part-0.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // A damaged second file is recorded, not fatal.
    std::fs::write(d.join("pq/part-1.parquet"), b"PAR1 this is not really parquet").unwrap();
    let spec =
        corpus_spec(d, "pq", "parquet", "pq", "[columns]\nimage = \"img\"\nid = \"key\"\nlabel = \"y\"\n", &classes());
    let shards = d.join("shards");
    selftrain_ok(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&shards)]);
    assert_eq!(shard_ids(&shards), vec!["a", "d"]);
    let records = skipped_records(&shards);
    assert_reasons(
        &records,
        &[("b", "null image bytes"), ("c", "not a recognised"), ("e", "cannot decode"), ("part-1/*", "Parquet")],
    );
    assert_eq!(records.len(), 4, "{records:#?}");
    let out = selftrain_ok(&["eval", "--model", s(&onnx), "--spec", s(&spec), "--split", "train"]);
    assert!(out.contains("/2)") && out.contains("4 image(s) skipped"), "{out}");

    // A wrong column name is a spec error naming the key.
    let wrong = corpus_spec(d, "pq-wrong", "parquet", "pq", "[columns]\nimage = \"pixels\"\n", &classes());
    let err = selftrain_err(&["label", "--model", s(&onnx), "--spec", s(&wrong), "--out", s(&d.join("s2"))]);
    assert!(err.contains("pixels") && err.contains("columns.image"), "{err}");
}

#[test]
fn every_spec_in_data_specs_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data-specs");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let spec = selftrain_data::DataSpec::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            names.push((spec.name.clone(), spec.num_classes()));
        }
    }
    names.sort();
    assert!(names.contains(&("imagenet-1k".into(), 1000)), "{names:?}");
    assert!(names.contains(&("fashion-mnist".into(), 10)), "{names:?}");
    assert!(
        names.iter().any(|(n, _)| n.contains("tar")) && names.iter().any(|(n, _)| n.contains("folder")),
        "{names:?}"
    );
}

#[test]
fn a_teacher_trains_on_a_folder_corpus_with_random_resized_crops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = tiny_fashion_mnist(d, 100, 10);
    let folders = d.join("folders");
    selftrain_ok(&[
        "data",
        "synth",
        "--spec",
        s(&tiny),
        "--count",
        "100",
        "--size",
        "40",
        "--layout",
        "folder",
        "--out",
        s(&folders),
    ]);
    plant(&folders.join("Bag"), &first_jpeg(&folders));
    let spec = corpus_spec(d, "folders", "folder", "folders", "train_crop = \"random-resized\"\n", &classes());
    let text = std::fs::read_to_string(&spec).unwrap() + "\n[splits.test]\nimages = \"folders\"\n";
    std::fs::write(&spec, text).unwrap();
    // Train at 32 px crops, test (and record in the checkpoint) 36 px.
    let config = tiny_train_config(d, &spec, "workers = 2\n");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("subset = \"labelled:10:0\"", "subset = \"all\"\ntrain_resolution = 32\ntest_resolution = 36");
    std::fs::write(&config, text).unwrap();
    let out = d.join("teacher");
    selftrain_ok(&["train", "--config", s(&config), "--out", s(&out), "--device", "cpu"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // Listed: 100 + 6 planted; the 4 bad files are left out of every batch.
    assert_eq!(report["labelled_images"], 106, "{report:#}");
    assert_eq!(report["skipped_images"], 4, "{report:#}");
    assert_eq!(report["test"]["total"], 102, "{report:#}");
    assert_eq!(report["test"]["skipped"], 4, "{report:#}");
    // The checkpoint asks for 36 px; the label stage decodes at that size.
    let onnx = d.join("teacher.onnx");
    selftrain_ok(&["export", "--checkpoint", s(&out.join("checkpoint.safetensors")), "--out", s(&onnx)]);
    let shards = d.join("shards");
    selftrain_ok(&["label", "--model", s(&onnx), "--spec", s(&spec), "--out", s(&shards)]);
    assert_eq!(shard_ids(&shards).len(), 102);

    // A resolution on an IDX spec is refused with the key named.
    let idx_config = tiny_train_config(d, &tiny, "");
    let text = std::fs::read_to_string(&idx_config)
        .unwrap()
        .replace("subset = \"labelled:10:0\"", "subset = \"labelled:10:0\"\ntrain_resolution = 32");
    std::fs::write(&idx_config, text).unwrap();
    let err = selftrain_err(&["train", "--config", s(&idx_config), "--out", s(&d.join("t2")), "--device", "cpu"]);
    assert!(err.contains("data.train_resolution") && err.contains("Idx"), "{err}");
}
