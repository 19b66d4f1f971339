//! Fixtures shared by the end-to-end tests: a tiny Fashion-MNIST built
//! inside each test from the real data set, and helpers to run the binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Path of the real Fashion-MNIST (as data-specs/fashion-mnist.toml finds it).
pub fn fashion_mnist_dir() -> PathBuf {
    let dir =
        std::env::var_os("SELFTRAIN_FASHION_MNIST_DIR").map(PathBuf::from).unwrap_or_else(|| FASHION_MNIST.into());
    assert!(
        dir.join("train-images-idx3-ubyte.gz").is_file(),
        "Fashion-MNIST is missing at {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

fn read_gz(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn write_idx_gz(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap();
}

/// Writes the first `train` training and `test` test images of the real
/// Fashion-MNIST as IDX files into `dir`, plus `dir/spec.toml`.
pub fn tiny_fashion_mnist(dir: &Path, train: usize, test: usize) -> PathBuf {
    let src = fashion_mnist_dir();
    for (split, n, images, labels) in [
        ("train", train, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k", test, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ] {
        let img = read_gz(&src.join(images));
        let lab = read_gz(&src.join(labels));
        write_idx_gz(&dir.join(format!("{split}-images.gz")), &[n as u32, 28, 28], &img[16..16 + n * 784]);
        write_idx_gz(&dir.join(format!("{split}-labels.gz")), &[n as u32], &lab[8..8 + n]);
    }
    let spec = dir.join("spec.toml");
    let real =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data-specs/fashion-mnist.toml")).unwrap();
    let text = real
        .replace("name = \"fashion-mnist\"", "name = \"tiny-fashion-mnist\"")
        .replace("root = \"/usr/share/datasets/fashion-mnist\"", "root = \".\"")
        .replace("root_env = \"SELFTRAIN_FASHION_MNIST_DIR\"\n", "")
        .replace("train-images-idx3-ubyte.gz", "train-images.gz")
        .replace("train-labels-idx1-ubyte.gz", "train-labels.gz")
        .replace("t10k-images-idx3-ubyte.gz", "t10k-images.gz")
        .replace("t10k-labels-idx1-ubyte.gz", "t10k-labels.gz");
    std::fs::write(&spec, text).unwrap();
    spec
}

/// A tiny train config (smallest family member, one short epoch).
pub fn tiny_train_config(dir: &Path, spec: &Path, extra: &str) -> PathBuf {
    let path = dir.join("train.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[model]
arch = "resnet-rs-50"
depth = [1, 1, 1, 1]
width = 0.125
small_input = true

[data]
spec = "{}"
subset = "labelled:10:0"

[optim]
epochs = 1
batch_size = 32
threads = 2
{extra}
"#,
            spec.display()
        ),
    )
    .unwrap();
    path
}

pub fn selftrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_selftrain")).args(args).env("NO_COLOR", "1").output().unwrap()
}

/// Runs the binary, failing the test with its output when it fails.
pub fn selftrain_ok(args: &[&str]) -> String {
    let out = selftrain(args);
    assert!(
        out.status.success(),
        "selftrain {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary expecting failure; returns stderr.
pub fn selftrain_err(args: &[&str]) -> String {
    let out = selftrain(args);
    assert!(
        !out.status.success(),
        "selftrain {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
