//! Pipeline files and the runner.
//!
//! A pipeline file describes the stages of Noisy Student rounds; the runner
//! only orders them and caches their results. Each stage writes into its own
//! folder under the work folder and records a `stage.json` with a key
//! derived from its settings and its inputs' keys; a stage whose key matches
//! and whose outputs exist is reused, so an interrupted run picks up at the
//! first unfinished stage (and a half-labelled corpus at the first missing
//! shard).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use selftrain_data::Subset;
use selftrain_filter::FilterConfig;
use selftrain_model::ModelSpec;
use selftrain_model::onnx::ExportOptions;
use selftrain_train::{DataConfig, OptimConfig, PseudoConfig, PseudoTargets, TrainConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::Bars;
use crate::stages::{self, Corpus, LabelJob, write_json};
use crate::{parse_device, show};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (pipelines/*.toml).
    pub pipeline: PathBuf,
    /// Work folder for every stage's outputs (default: runs/<pipeline name>).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Replace the pipeline's number of Noisy Student rounds.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Re-run every stage even if its outputs are up to date.
    #[arg(long)]
    pub force: bool,
    /// Replace the pipeline's device (auto, cpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub pipeline: PipelineSection,
    pub data: PipelineData,
    pub teacher: TrainStage,
    pub label: LabelStage,
    pub filter: FilterConfig,
    pub student: StudentStage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
    /// Noisy Student rounds: in each, the current teacher labels the corpus
    /// and a student trains; the student is the next round's teacher.
    #[serde(default = "one")]
    pub rounds: usize,
    #[serde(default = "auto")]
    pub device: String,
}

fn one() -> usize {
    1
}
fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineData {
    pub spec: PathBuf,
    #[serde(default = "train_split")]
    pub train_split: String,
    #[serde(default = "test_split")]
    pub test_split: String,
    /// The labelled images: `labelled:N:SEED` (N per class) or `all`.
    pub labelled: Subset,
    /// Split holding the unlabelled corpus (default: the train split).
    #[serde(default)]
    pub unlabelled_split: Option<String>,
    /// The unlabelled corpus (default: the rest of the train split).
    #[serde(default)]
    pub unlabelled: Option<Subset>,
    /// Corpus formats: training crop size (default: the spec's size).
    #[serde(default)]
    pub train_resolution: Option<usize>,
    /// Corpus formats: evaluation and labelling size (default: the spec's).
    #[serde(default)]
    pub test_resolution: Option<usize>,
}

fn train_split() -> String {
    "train".into()
}
fn test_split() -> String {
    "test".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    pub model: ModelSpec,
    pub optim: OptimConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentStage {
    pub model: ModelSpec,
    pub optim: OptimConfig,
    pub pseudo: PseudoStage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudoStage {
    pub targets: PseudoTargets,
    pub ratio: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelStage {
    #[serde(default = "one")]
    pub num_shards: usize,
    #[serde(default = "batch")]
    pub batch_size: usize,
    #[serde(default = "topk")]
    pub topk: usize,
    #[serde(default = "threads")]
    pub threads: usize,
    /// Loader threads decoding and preparing batches.
    #[serde(default = "threads")]
    pub workers: usize,
}

fn batch() -> usize {
    256
}
fn topk() -> usize {
    5
}
fn threads() -> usize {
    2
}

impl PipelineFile {
    pub fn load(path: &Path) -> anyhow::Result<PipelineFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading pipeline {}", show(path)))?;
        let mut file: PipelineFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("pipeline {}: {e}", show(path)))?;
        if file.data.spec.is_relative() {
            file.data.spec = path.parent().unwrap_or(Path::new(".")).join(&file.data.spec);
        }
        if file.pipeline.rounds == 0 {
            anyhow::bail!("pipeline {}: key `pipeline.rounds`: expected at least 1", show(path));
        }
        if file.label.num_shards == 0 {
            anyhow::bail!("pipeline {}: key `label.num_shards`: expected at least 1", show(path));
        }
        Ok(file)
    }

    fn unlabelled(&self) -> anyhow::Result<(String, Subset)> {
        let split = self.data.unlabelled_split.clone().unwrap_or_else(|| self.data.train_split.clone());
        let subset = match (self.data.unlabelled, self.data.labelled) {
            (Some(s), _) => s,
            (None, Subset::Labelled { per_class, seed }) if split == self.data.train_split => {
                Subset::Unlabelled { per_class, seed }
            }
            (None, _) if split != self.data.train_split => Subset::All,
            (None, _) => anyhow::bail!(
                "key `data.unlabelled`: with `labelled = {}` on the same split, say which images are unlabelled",
                self.data.labelled
            ),
        };
        Ok((split, subset))
    }

    fn train_config(&self, role: &str, stage: (&ModelSpec, &OptimConfig), pseudo: Option<PseudoConfig>) -> TrainConfig {
        TrainConfig {
            role: role.to_string(),
            model: stage.0.clone(),
            data: DataConfig {
                spec: self.data.spec.clone(),
                train_split: self.data.train_split.clone(),
                subset: self.data.labelled,
                test_split: self.data.test_split.clone(),
                train_resolution: self.data.train_resolution,
                test_resolution: self.data.test_resolution,
            },
            optim: stage.1.clone(),
            pseudo,
            init: None,
        }
    }
}

/// Cache bookkeeping of one stage.
#[derive(Debug, Serialize, Deserialize)]
struct StageStamp {
    key: String,
    outputs: Vec<PathBuf>,
    seconds: f64,
}

fn stage_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// Runs `body` unless `dir/stage.json` holds `key` and the outputs exist.
fn cached<T: Serialize + for<'de> Deserialize<'de>>(
    dir: &Path,
    key: &str,
    outputs: &[PathBuf],
    force: bool,
    name: &str,
    body: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stamp_path = dir.join("stage.json");
    let result_path = dir.join("result.json");
    if !force {
        let stamp: Option<StageStamp> =
            std::fs::read_to_string(&stamp_path).ok().and_then(|t| serde_json::from_str(&t).ok());
        if let Some(stamp) = stamp {
            if stamp.key == key && outputs.iter().all(|p| p.exists()) {
                if let Some(result) =
                    std::fs::read_to_string(&result_path).ok().and_then(|t| serde_json::from_str(&t).ok())
                {
                    tracing::info!("{name}: up to date in {}, reused", show(dir));
                    return Ok(result);
                }
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", show(dir)))?;
    let _ = std::fs::remove_file(&stamp_path);
    let started = Instant::now();
    let result = body().with_context(|| format!("stage {name}"))?;
    write_json(&result_path, &result)?;
    write_json(
        &stamp_path,
        &StageStamp { key: key.to_string(), outputs: outputs.to_vec(), seconds: started.elapsed().as_secs_f64() },
    )?;
    Ok(result)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainResult {
    checkpoint: PathBuf,
    test_accuracy: Option<f64>,
    labelled_images: usize,
    pseudo_labelled_rows: usize,
    seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoundSummary {
    round: usize,
    pseudo_label_accuracy_all: f64,
    pseudo_labelled_images: usize,
    pseudo_label_accuracy_kept: f64,
    kept_images: usize,
    kept_per_class: Vec<ClassKept>,
    filtered_rows: usize,
    label_images_per_second: f64,
    student: TrainResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClassKept {
    class: String,
    /// Distinct images kept.
    kept: usize,
    /// Repeats added to fill the class up to K.
    duplicates: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    pipeline: String,
    work: PathBuf,
    teacher: TrainResult,
    rounds: Vec<RoundSummary>,
    seconds: f64,
}

fn train_result(r: selftrain_train::TrainReport) -> TrainResult {
    TrainResult {
        checkpoint: r.checkpoint,
        test_accuracy: r.test.map(|t| t.accuracy),
        labelled_images: r.labelled_images,
        pseudo_labelled_rows: r.pseudo_labelled_rows,
        seconds: r.seconds,
    }
}

pub fn run(args: &RunArgs, bars: &Bars) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut p = PipelineFile::load(&args.pipeline)?;
    if let Some(r) = args.rounds {
        p.pipeline.rounds = r.max(1);
    }
    if let Some(d) = &args.device {
        p.pipeline.device = d.clone();
    }
    let device = parse_device(&p.pipeline.device)?;
    let work = args.work.clone().unwrap_or_else(|| PathBuf::from("runs").join(&p.pipeline.name));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", show(&work)))?;
    let resolved = toml::to_string_pretty(&p)?;
    selftrain_data::atomic::write_atomic(&work.join("pipeline.toml"), resolved.as_bytes())?;
    let (unlabelled_split, unlabelled_subset) = p.unlabelled()?;
    let corpus = Corpus::new(&p.data.spec, &unlabelled_split, unlabelled_subset)?;
    let spec_text = std::fs::read_to_string(&p.data.spec).unwrap_or_default();
    tracing::info!("pipeline {} into {} on {:?}", p.pipeline.name, show(&work), device);

    // Teacher.
    let teacher_dir = work.join("teacher");
    let teacher_config = p.train_config("teacher", (&p.teacher.model, &p.teacher.optim), None);
    let teacher_key = stage_key(&["teacher", &toml::to_string(&teacher_config)?, &spec_text]);
    let teacher_checkpoint = teacher_dir.join("checkpoint.safetensors");
    let teacher = cached(&teacher_dir, &teacher_key, &[teacher_checkpoint.clone()], args.force, "teacher", || {
        Ok(train_result(stages::train(&teacher_config, &teacher_dir, device, bars)?))
    })?;

    // The corpus is the same in every round: its held-back labels, which
    // score the pseudo-labels, are read once.
    let (_, truth, _) = corpus.open(&|_| true)?;
    let mut rounds = Vec::new();
    let (mut current_checkpoint, mut current_key) = (teacher.checkpoint.clone(), teacher_key.clone());
    for round in 1..=p.pipeline.rounds {
        let dir = work.join(format!("round-{round}"));
        // Export.
        let onnx = dir.join("export").join("teacher.onnx");
        let export_key = stage_key(&["export", &current_key]);
        let checkpoint = current_checkpoint.clone();
        let onnx_out = onnx.clone();
        cached(&dir.join("export"), &export_key, &[onnx.clone()], args.force, "export", || {
            stages::export_onnx(&checkpoint, &onnx_out, &ExportOptions::default())?;
            Ok(onnx_out.clone())
        })?;
        // Label.
        let shard_dir = dir.join("shards");
        let label_key = stage_key(&["label", &export_key, &toml::to_string(&p.label)?, &corpus.description()]);
        let job = LabelJob {
            model: onnx.clone(),
            corpus: corpus.clone(),
            out_dir: shard_dir.clone(),
            shard_index: None,
            num_shards: p.label.num_shards,
            batch_size: p.label.batch_size,
            topk: p.label.topk,
            threads: p.label.threads,
            workers: p.label.workers,
            force: args.force,
            ort_library: None,
        };
        let shard_files: Vec<PathBuf> = (0..p.label.num_shards)
            .map(|i| shard_dir.join(selftrain_data::schema::shard_file_name(i, p.label.num_shards)))
            .collect();
        let label_rate: f64 = cached(&shard_dir, &label_key, &shard_files, args.force, "label", || {
            let outcomes = stages::label(&job, bars)?;
            let rows: usize = outcomes.iter().map(|o| o.rows).sum();
            let secs: f64 = outcomes.iter().map(|o| o.rows as f64 / o.images_per_second.max(1e-9)).sum();
            Ok(rows as f64 / secs.max(1e-9))
        })?;
        // Filter.
        let filtered = dir.join("filter").join("pseudo-labels.parquet");
        let filter_key = stage_key(&["filter", &label_key, &toml::to_string(&p.filter)?]);
        let filtered_out = filtered.clone();
        let report = cached(&dir.join("filter"), &filter_key, &[filtered.clone()], args.force, "filter", || {
            let r = stages::filter(&shard_dir, &filtered_out, &p.filter)?;
            Ok(r.classes.iter().map(|c| (c.class.clone(), c.kept, c.duplicates)).collect::<Vec<_>>())
        })?;
        let accuracy = selftrain_filter::pseudo_label_accuracy(&shard_dir, &filtered, &truth)?;
        // Student.
        let student_dir = dir.join("student");
        let pseudo = PseudoConfig {
            labels: filtered.clone(),
            split: unlabelled_split.clone(),
            targets: p.student.pseudo.targets,
            ratio: p.student.pseudo.ratio,
        };
        let role = format!("student-{round}");
        let student_config = p.train_config(&role, (&p.student.model, &p.student.optim), Some(pseudo));
        let student_key = stage_key(&["student", &filter_key, &toml::to_string(&student_config)?]);
        let student_checkpoint = student_dir.join("checkpoint.safetensors");
        let student = cached(&student_dir, &student_key, &[student_checkpoint], args.force, &role, || {
            Ok(train_result(stages::train(&student_config, &student_dir, device, bars)?))
        })?;
        let ratio = |c: usize, t: usize| c as f64 / t.max(1) as f64;
        rounds.push(RoundSummary {
            round,
            pseudo_label_accuracy_all: ratio(accuracy.all_correct, accuracy.all_total),
            pseudo_labelled_images: accuracy.all_total,
            pseudo_label_accuracy_kept: ratio(accuracy.kept_correct, accuracy.kept_total),
            kept_images: accuracy.kept_total,
            kept_per_class: report
                .iter()
                .map(|(c, k, d)| ClassKept { class: c.clone(), kept: *k, duplicates: *d })
                .collect(),
            filtered_rows: report.iter().map(|(_, k, d)| k + d).sum(),
            label_images_per_second: label_rate,
            student: student.clone(),
        });
        current_checkpoint = student.checkpoint.clone();
        current_key = student_key;
    }

    let summary = Summary {
        pipeline: p.pipeline.name.clone(),
        work: work.clone(),
        teacher,
        rounds,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&work.join("summary.json"), &summary)?;
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &Summary) {
    let acc = |a: Option<f64>| a.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    println!();
    println!("pipeline {} ({:.0} s), outputs in {}", s.pipeline, s.seconds, show(&s.work));
    println!("{:<34} {:>10} {:>10}", "", "images", "accuracy");
    println!(
        "{:<34} {:>10} {:>10}",
        format!("teacher ({} labelled images)", s.teacher.labelled_images),
        "test",
        acc(s.teacher.test_accuracy)
    );
    for r in &s.rounds {
        println!(
            "{:<34} {:>10} {:>10}",
            format!("round {} pseudo-labels, all", r.round),
            r.pseudo_labelled_images,
            acc(Some(r.pseudo_label_accuracy_all))
        );
        println!(
            "{:<34} {:>10} {:>10}",
            format!("round {} pseudo-labels, kept", r.round),
            r.kept_images,
            acc(Some(r.pseudo_label_accuracy_kept))
        );
        let per_class: Vec<String> = r.kept_per_class.iter().map(|c| format!("{}={}", c.class, c.kept)).collect();
        println!("{:<34} {}", format!("round {} kept per class", r.round), per_class.join(", "));
        println!(
            "{:<34} {:>10} {:>10}",
            format!("round {} student (+{} pseudo rows)", r.round, r.student.pseudo_labelled_rows),
            "test",
            acc(r.student.test_accuracy)
        );
    }
    println!("teacher test accuracy: {}", acc(s.teacher.test_accuracy));
    if let Some(last) = s.rounds.last() {
        println!("student test accuracy: {}", acc(last.student.test_accuracy));
    }
}
