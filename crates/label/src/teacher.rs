//! The teacher: an ONNX classifier opened in ONNX Runtime, with the class
//! names and preprocessing it expects (from its metadata, or given).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, ValueType};
use selftrain_data::schema::model_meta::{self as keys, Preprocess};
use sha2::{Digest, Sha256};

use crate::error::LabelError;

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where ONNX Runtime's shared library is looked for: the given path, then
/// `ORT_DYLIB_PATH`, then the path the build was configured with
/// (scripts/setup.sh's `.deps/libonnxruntime.so`).
fn library_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    // Baked in at compile time from .cargo/config.toml ([env]).
    option_env!("ORT_DYLIB_PATH").map(PathBuf::from)
}

/// Loads ONNX Runtime once per process.
pub fn init_runtime(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment, LabelError> {
    let env = RUNTIME.get_or_init(|| {
        let path = library_path(explicit).ok_or_else(|| {
            "no ONNX Runtime library: run scripts/setup.sh, or set ORT_DYLIB_PATH to libonnxruntime.so".to_string()
        })?;
        if !path.exists() {
            return Err(format!(
                "ONNX Runtime library {} does not exist; run scripts/setup.sh or set ORT_DYLIB_PATH",
                path.display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
            .with_name("selftrain")
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|e| LabelError::Runtime(e.clone()))
}

/// Values that replace or fill in what the model's metadata says.
#[derive(Debug, Clone, Default)]
pub struct TeacherOverrides {
    pub class_names: Option<Vec<String>>,
    pub preprocess: Option<Preprocess>,
    /// `logits` or `probabilities`; without it, the metadata decides, and
    /// without metadata each batch is checked for being a distribution.
    pub output_kind: Option<String>,
}

/// An open teacher model.
pub struct Teacher {
    pub path: PathBuf,
    pub sha256: String,
    /// `<model name>@<first 12 hex digits of the file's SHA-256>`.
    pub identity: String,
    pub class_names: Vec<String>,
    pub preprocess: Preprocess,
    pub output_kind: Option<String>,
    input_name: String,
    session: Session,
}

impl Teacher {
    /// Opens `path` with `threads` intra-op threads.
    pub fn open(
        path: &Path,
        threads: usize,
        overrides: &TeacherOverrides,
        ort_library: Option<&Path>,
    ) -> Result<Teacher, LabelError> {
        let fail = |message: String| LabelError::Teacher { path: path.to_path_buf(), message };
        let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| fail(format!("cannot read: {e}")))?;
        let sha256 = format!("{:x}", hasher.finalize());
        let env = init_runtime(ort_library)?;
        // From the file, so weights stored as external data beside it load too.
        let session = Session::builder(env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(threads.max(1))?))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| fail(format!("ONNX Runtime cannot load it: {e}")))?;
        let meta = session.metadata().map_err(|e| fail(e.to_string()))?;
        let custom = |key: &str| meta.custom(key);
        let name = custom(keys::ONNX_MODEL_NAME)
            .or_else(|| meta.name())
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let class_names = match (&overrides.class_names, custom(keys::ONNX_CLASS_NAMES)) {
            (Some(given), _) => given.clone(),
            (None, Some(json)) => serde_json::from_str(&json)
                .map_err(|e| fail(format!("metadata {:?} is not a JSON list of names: {e}", keys::ONNX_CLASS_NAMES)))?,
            (None, None) => {
                return Err(fail(
                    "has no class names in its metadata; give them (for example from a data spec)".into(),
                ));
            }
        };
        let preprocess = match (&overrides.preprocess, custom(keys::ONNX_PREPROCESS)) {
            (Some(given), _) => given.clone(),
            (None, Some(json)) => serde_json::from_str(&json).map_err(|e| {
                fail(format!("metadata {:?} is not a valid preprocessing description: {e}", keys::ONNX_PREPROCESS))
            })?,
            (None, None) => {
                return Err(fail("has no preprocessing in its metadata; give mean, std and size".into()));
            }
        };
        let output_kind = overrides.output_kind.clone().or_else(|| custom(keys::ONNX_OUTPUT_KIND));
        drop(meta);

        let [input] = session.inputs() else {
            return Err(fail(format!("expected one input, found {}", session.inputs().len())));
        };
        let input_name = input.name().to_string();
        let want_input = [preprocess.channels as i64, preprocess.height as i64, preprocess.width as i64];
        if let ValueType::Tensor { shape, .. } = input.dtype() {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let fits = dims.len() == 4 && dims[1..].iter().zip(&want_input).all(|(d, w)| *d < 0 || d == w);
            if !fits {
                return Err(fail(format!(
                    "input {input_name:?} has shape {dims:?}, expected [batch, {}, {}, {}] (NCHW)",
                    want_input[0], want_input[1], want_input[2]
                )));
            }
        }
        let Some(output) = session.outputs().first() else {
            return Err(fail("has no outputs".into()));
        };
        if let ValueType::Tensor { shape, .. } = output.dtype() {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let classes = dims.last().copied().unwrap_or(-1);
            if dims.len() != 2 || (classes >= 0 && classes as usize != class_names.len()) {
                return Err(fail(format!(
                    "output {:?} has shape {dims:?}, expected [batch, {}] for the {} classes",
                    output.name(),
                    class_names.len(),
                    class_names.len()
                )));
            }
        }
        Ok(Teacher {
            path: path.to_path_buf(),
            identity: format!("{name}@{}", &sha256[..12]),
            sha256,
            class_names,
            preprocess,
            output_kind,
            input_name,
            session,
        })
    }

    /// Class probabilities for a normalised NCHW batch: `n` rows of
    /// `class_names.len()` values.
    pub fn predict(&mut self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, LabelError> {
        let p = &self.preprocess;
        let shape = [n, p.channels, p.height, p.width];
        let input = Tensor::from_array((shape, pixels)).map_err(|e| LabelError::Runtime(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(|e| LabelError::Runtime(format!("inference with {} failed: {e}", self.path.display())))?;
        let (shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| LabelError::Runtime(format!("{}: output is not a float tensor: {e}", self.path.display())))?;
        let k = self.class_names.len();
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims != [n as i64, k as i64] {
            return Err(LabelError::Teacher {
                path: self.path.clone(),
                message: format!("output has shape {dims:?}, expected [{n}, {k}] (one score per class)"),
            });
        }
        let mut values = values.to_vec();
        let is_distribution = |v: &[f32]| {
            v.chunks(k)
                .all(|row| row.iter().all(|x| (0.0..=1.0).contains(x)) && (row.iter().sum::<f32>() - 1.0).abs() < 1e-3)
        };
        let softmax = match self.output_kind.as_deref() {
            Some("probabilities") => false,
            Some("logits") => true,
            _ => !is_distribution(&values),
        };
        if softmax {
            for row in values.chunks_mut(k) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in row.iter_mut() {
                    *x /= sum;
                }
            }
        }
        Ok(values)
    }
}

impl Teacher {
    /// Top-1 accuracy on a labelled set: `(correct, total)`.
    /// Top-1 accuracy on `set` (row `r` has true class `labels[r]`):
    /// `(correct, total, skipped)`, skipped images left out of the total.
    pub fn accuracy(
        &mut self,
        set: std::sync::Arc<dyn selftrain_data::Samples>,
        labels: &[i64],
        batch_size: usize,
        workers: usize,
    ) -> Result<(usize, usize, usize), LabelError> {
        use selftrain_data::loader::{Loader, LoaderConfig, Normalize};
        let normalize = Normalize { mean: self.preprocess.mean.clone(), std: self.preprocess.std.clone() };
        let k = self.class_names.len();
        let rows: Vec<usize> = (0..set.len()).collect();
        let batches: Vec<Vec<usize>> = rows.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
        let config = LoaderConfig {
            workers: workers.max(1),
            prefetch: 2 * workers.max(1),
            augment: selftrain_data::augment::Augment::None,
            seed: 0,
        };
        let (mut correct, mut total, mut skipped) = (0, 0, 0);
        for batch in Loader::start(set, batches, normalize, &config) {
            skipped += batch.failed.len();
            if batch.rows.is_empty() {
                continue;
            }
            let probs = self.predict(batch.pixels, batch.rows.len())?;
            for (j, &row) in batch.rows.iter().enumerate() {
                let dist = &probs[j * k..(j + 1) * k];
                let best = (0..k).max_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(b.cmp(&a))).unwrap_or(0);
                correct += usize::from(best as i64 == labels[row]);
                total += 1;
            }
        }
        Ok((correct, total, skipped))
    }
}
