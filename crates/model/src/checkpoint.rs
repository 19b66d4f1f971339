//! Checkpoints as safetensors files: tensors under timm's state-dict names,
//! plus a `selftrain` metadata entry (model config, class names,
//! preprocessing) so a checkpoint is self-describing.
//!
//! The format is small enough to read and write here directly: an 8-byte
//! little-endian header length, a JSON header mapping each name to dtype,
//! shape and byte range (plus `__metadata__`), then the raw bytes.
//! BatchNorm's `num_batches_tracked` (timm has it, tch does not) is written
//! as an int64 zero so timm loads our files strictly, and ignored on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use selftrain_data::atomic::write_atomic;
use selftrain_data::schema::model_meta::Preprocess;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor, nn::VarStore};

use crate::config::ModelConfig;
use crate::error::ModelError;

/// The `__metadata__` key holding [`CheckpointMeta`] as JSON.
pub const META_KEY: &str = "selftrain";
const BATCHES_TRACKED: &str = "num_batches_tracked";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub model: ModelConfig,
    pub class_names: Vec<String>,
    pub preprocess: Preprocess,
    /// Free-form provenance, e.g. `teacher` or `student round 1`.
    pub role: String,
}

/// A tensor as stored: dtype name, shape, little-endian bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub dtype: String,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

/// A checkpoint read into memory.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub meta: Option<CheckpointMeta>,
    pub tensors: BTreeMap<String, StoredTensor>,
    pub sha256: String,
}

fn ck_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

fn kind_of(dtype: &str) -> Option<(Kind, usize)> {
    Some(match dtype {
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "F64" => (Kind::Double, 8),
        "I64" => (Kind::Int64, 8),
        _ => return None,
    })
}

#[derive(Serialize, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [usize; 2],
}

/// Serialises the variables of `vs` with `meta` and writes them atomically.
pub fn save(vs: &VarStore, meta: &CheckpointMeta, path: &Path) -> Result<(), ModelError> {
    let mut tensors: BTreeMap<String, StoredTensor> = BTreeMap::new();
    for (name, t) in vs.variables() {
        let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let values = Vec::<f32>::try_from(t.reshape([-1]))?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        if let Some(prefix) = name.strip_suffix(".running_var") {
            tensors.insert(
                format!("{prefix}.{BATCHES_TRACKED}"),
                StoredTensor { dtype: "I64".into(), shape: vec![], data: 0i64.to_le_bytes().to_vec() },
            );
        }
        tensors.insert(name, StoredTensor { dtype: "F32".into(), shape: t.size(), data });
    }
    let meta_json = serde_json::to_string(meta).map_err(|e| ck_error(path, e.to_string()))?;
    let bytes = encode(&tensors, &[("format", "pt"), (META_KEY, &meta_json)]);
    write_atomic(path, &bytes).map_err(|e| ck_error(path, e.to_string()))
}

fn encode(tensors: &BTreeMap<String, StoredTensor>, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> =
        metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0;
    for (name, t) in tensors {
        let entry = HeaderEntry {
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            data_offsets: [offset, offset + t.data.len()],
        };
        header.insert(name.clone(), serde_json::to_value(entry).expect("header entry serialises"));
        offset += t.data.len();
    }
    let mut head = serde_json::to_vec(&header).expect("header serialises");
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for t in tensors.values() {
        out.extend_from_slice(&t.data);
    }
    out
}

impl Checkpoint {
    /// Reads a safetensors file (ours or one saved by timm / PyTorch).
    pub fn read(path: &Path) -> Result<Checkpoint, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        if bytes.len() < 8 {
            return Err(ck_error(path, "expected a safetensors file, found fewer than 8 bytes"));
        }
        let head_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let Some(head) = bytes.get(8..8usize.saturating_add(head_len)) else {
            return Err(ck_error(
                path,
                format!("header of {head_len} bytes runs past the end of the file (truncated?)"),
            ));
        };
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(head)
            .map_err(|e| ck_error(path, format!("header is not valid safetensors JSON: {e}")))?;
        let body = &bytes[8 + head_len..];
        let mut meta = None;
        let mut tensors = BTreeMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                if let Some(text) = value.get(META_KEY).and_then(|v| v.as_str()) {
                    meta = Some(serde_json::from_str(text).map_err(|e| {
                        ck_error(path, format!("metadata entry {META_KEY:?} is not a valid selftrain description: {e}"))
                    })?);
                }
                continue;
            }
            let entry: HeaderEntry = serde_json::from_value(value)
                .map_err(|e| ck_error(path, format!("tensor {name:?}: bad header entry: {e}")))?;
            let [start, end] = entry.data_offsets;
            let Some(data) = body.get(start..end) else {
                return Err(ck_error(
                    path,
                    format!("tensor {name:?}: bytes {start}..{end} run past the end of the file (truncated?)"),
                ));
            };
            if let Some((_, size)) = kind_of(&entry.dtype) {
                let count: i64 = entry.shape.iter().product();
                if count as usize * size != data.len() {
                    return Err(ck_error(
                        path,
                        format!("tensor {name:?}: shape {:?} does not match {} bytes", entry.shape, data.len()),
                    ));
                }
            }
            tensors.insert(name, StoredTensor { dtype: entry.dtype, shape: entry.shape, data: data.to_vec() });
        }
        Ok(Checkpoint { path: path.to_path_buf(), meta, tensors, sha256 })
    }

    /// The metadata, or an error saying the checkpoint does not describe its
    /// model (as timm's files do not).
    pub fn require_meta(&self) -> Result<&CheckpointMeta, ModelError> {
        self.meta.as_ref().ok_or_else(|| {
            ck_error(&self.path, format!("has no {META_KEY:?} metadata; give the architecture and classes explicitly"))
        })
    }

    /// Copies every tensor into the matching variable of `vs`. Names and
    /// shapes must match exactly; `num_batches_tracked` entries are ignored.
    pub fn load_into(&self, vs: &mut VarStore) -> Result<(), ModelError> {
        let mut variables = vs.variables();
        let mut unexpected = Vec::new();
        for (name, stored) in &self.tensors {
            if name.ends_with(BATCHES_TRACKED) {
                continue;
            }
            let Some(var) = variables.remove(name) else {
                unexpected.push(name.clone());
                continue;
            };
            if var.size() != stored.shape {
                return Err(ck_error(
                    &self.path,
                    format!("tensor {name:?} has shape {:?}, the model expects {:?}", stored.shape, var.size()),
                ));
            }
            let Some((kind, _)) = kind_of(&stored.dtype) else {
                return Err(ck_error(&self.path, format!("tensor {name:?} has unsupported dtype {}", stored.dtype)));
            };
            let value = Tensor::from_data_size(&stored.data, &stored.shape, kind).to_kind(var.kind());
            tch::no_grad(|| {
                let mut var = var;
                var.copy_(&value);
            });
        }
        let missing: Vec<String> = variables.into_keys().collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            let list = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                let more = if v.len() > 5 { format!(" and {} more", v.len() - 5) } else { String::new() };
                format!("{}{more}", v.into_iter().take(5).collect::<Vec<_>>().join(", "))
            };
            return Err(ck_error(
                &self.path,
                format!("does not fit the model: missing [{}], unexpected [{}]", list(&missing), list(&unexpected)),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSpec;
    use crate::resnet_rs::ResNetRs;

    fn tiny() -> ModelConfig {
        let mut spec = ModelSpec::named("resnet-rs-50");
        spec.depth = Some([1, 1, 1, 1]);
        spec.width = Some(0.125);
        spec.small_input = Some(true);
        spec.resolve(1, 3).unwrap()
    }

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            model: tiny(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            preprocess: Preprocess {
                channels: 1,
                height: 8,
                width: 8,
                mean: vec![0.5],
                std: vec![0.5],
                resize: "none".into(),
            },
            role: "test".into(),
        }
    }

    #[test]
    fn save_and_load_round_trip_exactly() {
        tch::manual_seed(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let vs = VarStore::new(tch::Device::Cpu);
        let model = ResNetRs::new(&vs.root(), &tiny());
        let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, tch::Device::Cpu));
        let want = model.forward_t(&x, false);
        save(&vs, &meta(), &path).unwrap();

        tch::manual_seed(2);
        let mut vs2 = VarStore::new(tch::Device::Cpu);
        let model2 = ResNetRs::new(&vs2.root(), &tiny());
        let ck = Checkpoint::read(&path).unwrap();
        assert_eq!(ck.meta.as_ref().unwrap(), &meta());
        assert!(ck.tensors.contains_key("bn1.num_batches_tracked"));
        ck.load_into(&mut vs2).unwrap();
        let got = model2.forward_t(&x, false);
        assert_eq!(f64::try_from((want - got).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn truncated_and_mismatched_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let vs = VarStore::new(tch::Device::Cpu);
        let _model = ResNetRs::new(&vs.root(), &tiny());
        save(&vs, &meta(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let err = Checkpoint::read(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.safetensors") && err.contains("truncated"), "{err}");

        let mut other = tiny();
        other.num_classes = 5;
        let mut vs3 = VarStore::new(tch::Device::Cpu);
        let _m = ResNetRs::new(&vs3.root(), &other);
        let err = Checkpoint::read(&path).unwrap().load_into(&mut vs3).unwrap_err().to_string();
        assert!(err.contains("fc.") && err.contains("shape"), "{err}");
    }
}
