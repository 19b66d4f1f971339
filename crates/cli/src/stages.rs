//! The stages as the commands and the pipeline runner both call them: each
//! delegates to its crate and writes its report next to its outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use selftrain_data::atomic::write_atomic;
use selftrain_data::corpus::Skipped;
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_data::subset::shard_of;
use selftrain_data::{DataSpec, Progress, Split, Subset};
use selftrain_filter::{FilterConfig, FilterReport};
use selftrain_label::{LabelConfig, ShardOutcome, Teacher, TeacherOverrides};
use selftrain_model::config::ModelConfig;
use selftrain_model::onnx::{ExportOptions, export};
use selftrain_model::{CheckpointMeta, ModelSpec};
use selftrain_train::{TrainConfig, TrainReport};
use serde::Serialize;

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomic(path, format!("{text}\n").as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// A corpus: a split of a data set, narrowed by a subset.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub spec: DataSpec,
    pub split: String,
    pub subset: Subset,
}

impl Corpus {
    pub fn new(spec_path: &Path, split: &str, subset: Subset) -> anyhow::Result<Corpus> {
        let spec = DataSpec::load(spec_path)?;
        spec.split(split)?;
        Ok(Corpus { spec, split: split.to_string(), subset })
    }

    /// Recorded in shard metadata; identifies the corpus across machines.
    pub fn description(&self) -> String {
        serde_json::json!({"spec": self.spec.name, "split": self.split, "subset": self.subset.to_string()}).to_string()
    }

    /// The corpus without labels, listed (images are decoded later, by the
    /// loader, for corpus formats), the true labels held back by image id
    /// (empty when the split has none), and records of the samples already
    /// known to be unusable. Only images whose id `keep` accepts are kept;
    /// a subset other than `all` needs every label, so it lists the whole
    /// split first.
    pub fn open(&self, keep: &dyn Fn(&str) -> bool) -> anyhow::Result<(Split, HashMap<String, i64>, Vec<Skipped>)> {
        let (split, skipped) = if self.subset == Subset::All {
            Split::open(&self.spec, &self.split, keep)?
        } else {
            let (all, skipped) = Split::open(&self.spec, &self.split, &|_| true)?;
            let rows: Vec<usize> =
                self.subset.rows_of(all.labels(), all.len())?.into_iter().filter(|&r| keep(&all.ids()[r])).collect();
            (all.select(&rows), skipped.into_iter().filter(|s| keep(&s.id)).collect())
        };
        let truth = match split.labels() {
            Some(labels) => split.ids().iter().cloned().zip(labels.iter().copied()).collect(),
            None => HashMap::new(),
        };
        Ok((split.without_labels(), truth, skipped))
    }
}

/// Trains into `out`: `config.toml` (resolved), `checkpoint.safetensors`,
/// `report.json`.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    device: tch::Device,
    progress: &dyn Progress,
) -> anyhow::Result<TrainReport> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let resolved = toml::to_string_pretty(config)?;
    write_atomic(&out.join("config.toml"), resolved.as_bytes())?;
    let report = selftrain_train::train(config, out, device, progress)?;
    write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub onnx: PathBuf,
    pub model: String,
    pub bytes: u64,
    pub checkpoint_sha256: String,
}

/// What describes a checkpoint that carries no selftrain metadata (a timm
/// state dict): a model spec file, the class count, and optionally a data
/// spec for class names and preprocessing.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ForeignCheckpointArgs {
    /// For a checkpoint without selftrain metadata (e.g. saved by timm): a
    /// TOML model table (`arch`, `depth`, `width`, `stem_widths`, ...).
    #[arg(long)]
    pub model_spec: Option<PathBuf>,
    /// For a checkpoint without selftrain metadata: number of classes.
    #[arg(long, default_value_t = 1000)]
    pub num_classes: i64,
    /// For a checkpoint without selftrain metadata and no data spec: input
    /// size in pixels (default: the size's test resolution).
    #[arg(long)]
    pub resolution: Option<usize>,
}

impl ForeignCheckpointArgs {
    /// The description to use if the checkpoint has none. `data` gives class
    /// names and preprocessing; without it, ImageNet's normalisation at the
    /// size's test resolution.
    pub fn fallback(&self, data: Option<&DataSpec>) -> anyhow::Result<Option<CheckpointMeta>> {
        let Some(path) = &self.model_spec else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model spec {}", path.display()))?;
        let spec: ModelSpec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("model spec {}: {e}", path.display()))?;
        let channels = data.map_or(3, |d| d.channels as i64);
        let model = spec.resolve(channels, self.num_classes)?;
        let (class_names, preprocess) = match data {
            Some(d) if d.num_classes() as i64 == self.num_classes => {
                (d.classes.clone(), selftrain_train::trainer::preprocess_of(d))
            }
            _ => {
                let size =
                    self.resolution.unwrap_or(ModelConfig::resolutions(&spec.arch).map_or(224, |r| r.1) as usize);
                (
                    (0..self.num_classes).map(|i| format!("class-{i}")).collect(),
                    Preprocess {
                        channels: channels as usize,
                        height: size,
                        width: size,
                        mean: vec![0.485, 0.456, 0.406],
                        std: vec![0.229, 0.224, 0.225],
                        resize: "bicubic".into(),
                    },
                )
            }
        };
        Ok(Some(CheckpointMeta { model, class_names, preprocess, role: format!("imported from {}", path.display()) }))
    }
}

/// Exports a checkpoint to ONNX.
pub fn export_onnx(checkpoint: &Path, out: &Path, options: &ExportOptions) -> anyhow::Result<ExportReport> {
    export_onnx_with(checkpoint, out, options, None)
}

pub fn export_onnx_with(
    checkpoint: &Path,
    out: &Path,
    options: &ExportOptions,
    fallback: Option<&CheckpointMeta>,
) -> anyhow::Result<ExportReport> {
    let loaded = selftrain_model::load_model_with(checkpoint, tch::Device::Cpu, fallback)?;
    export(&loaded.model, &loaded.meta, &loaded.sha256, options, out)?;
    let bytes = std::fs::metadata(out).with_context(|| format!("reading {}", out.display()))?.len();
    Ok(ExportReport { onnx: out.to_path_buf(), model: loaded.meta.model.name, bytes, checkpoint_sha256: loaded.sha256 })
}

/// One labelling job: a teacher, a corpus and which shards to write.
#[derive(Debug, Clone)]
pub struct LabelJob {
    pub model: PathBuf,
    pub corpus: Corpus,
    pub out_dir: PathBuf,
    /// `None`: every shard, one after the other.
    pub shard_index: Option<usize>,
    pub num_shards: usize,
    pub batch_size: usize,
    pub topk: usize,
    pub threads: usize,
    /// Loader threads decoding and preparing batches.
    pub workers: usize,
    pub force: bool,
    pub ort_library: Option<PathBuf>,
}

pub fn label(job: &LabelJob, progress: &dyn Progress) -> anyhow::Result<Vec<ShardOutcome>> {
    // Class names come from the model; a model without them (any foreign
    // classifier) takes the data spec's.
    let overrides = TeacherOverrides::default();
    let mut teacher = match Teacher::open(&job.model, job.threads, &overrides, job.ort_library.as_deref()) {
        Err(selftrain_label::LabelError::Teacher { message, .. }) if message.contains("has no class names") => {
            let overrides = TeacherOverrides {
                class_names: Some(job.corpus.spec.classes.clone()),
                preprocess: Some(selftrain_train::trainer::preprocess_of(&job.corpus.spec)),
                output_kind: None,
            };
            Teacher::open(&job.model, job.threads, &overrides, job.ort_library.as_deref())?
        }
        other => other?,
    };
    if teacher.class_names.len() != job.corpus.spec.num_classes() {
        anyhow::bail!(
            "teacher {} predicts {} classes, data spec {} has {}",
            job.model.display(),
            teacher.class_names.len(),
            job.corpus.spec.source.display(),
            job.corpus.spec.num_classes()
        );
    }
    let shards: Vec<usize> = match job.shard_index {
        Some(i) => vec![i],
        None => (0..job.num_shards).collect(),
    };
    let n = job.num_shards;
    if let Some(bad) = shards.iter().find(|&&i| i >= n) {
        anyhow::bail!("shard index {bad} is out of range: expected 0 <= index < num_shards ({n})");
    }
    // Listing only: the loader's workers decode each shard's images.
    let (split, _, skipped) = job.corpus.open(&|id| shards.contains(&shard_of(id, n)))?;
    let images =
        split.resized(teacher.preprocess.height, teacher.preprocess.width).into_samples(&job.corpus.spec, false);
    let mut outcomes = Vec::new();
    for index in shards {
        let config = LabelConfig {
            shard_index: index,
            num_shards: job.num_shards,
            batch_size: job.batch_size,
            topk: job.topk,
            force: job.force,
            workers: job.workers.max(1),
        };
        let outcome = selftrain_label::label_shard(
            &mut teacher,
            images.clone(),
            &skipped,
            &job.corpus.description(),
            &job.out_dir,
            &config,
            progress,
        )?;
        if outcome.skipped > 0 {
            tracing::warn!(
                "shard {index}: {} image(s) skipped, listed in {}",
                outcome.skipped,
                job.out_dir.join(selftrain_label::skipped_file_name(index, n)).display()
            );
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Filters shards into `out` and writes `<out stem>.report.json` beside it.
pub fn filter(shards: &Path, out: &Path, config: &FilterConfig) -> anyhow::Result<FilterReport> {
    let report = selftrain_filter::filter_shards(shards, out, config)?;
    write_json(&out.with_extension("report.json"), &report)?;
    Ok(report)
}
