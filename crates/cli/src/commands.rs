//! The single-stage commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use selftrain_data::{ImageSet, Split, Subset};
use selftrain_filter::FilterConfig;
use selftrain_label::{Teacher, TeacherOverrides};
use selftrain_model::onnx::{ExportOptions, ExternalData, OutputKind};
use selftrain_model::{ModelSpec, config::FAMILY};
use selftrain_train::TrainConfig;

use crate::progress::Bars;
use crate::stages::{self, Corpus, LabelJob};
use crate::{DeviceArgs, show};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train config (TOML: [model], [data], [optim], optional [pseudo]).
    #[arg(long)]
    pub config: PathBuf,
    /// Output folder (checkpoint.safetensors, config.toml, report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the config's epoch count.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Replace the config's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn train(args: &TrainArgs, bars: &Bars) -> anyhow::Result<()> {
    let mut config = TrainConfig::load(&args.config)?;
    if let Some(e) = args.epochs {
        config.optim.epochs = e;
    }
    if let Some(s) = args.seed {
        config.optim.seed = s;
    }
    config.validate().map_err(|m| anyhow::anyhow!("{}: {m}", show(&args.config)))?;
    let report = stages::train(&config, &args.out, args.device.device()?, bars)?;
    println!("checkpoint: {}", show(&report.checkpoint));
    if let Some(t) = &report.test {
        println!("test accuracy: {:.4} ({}/{})", t.accuracy, t.correct, t.total);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint written by `selftrain train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The .onnx file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep BatchNormalization nodes instead of folding them into the convs.
    #[arg(long)]
    pub keep_batch_norm: bool,
    /// Output of the graph: logits, or probabilities (softmax added).
    #[arg(long, default_value = "logits", value_parser = ["logits", "probabilities"])]
    pub output: String,
    /// Store the weights as float16 (half the file; arithmetic stays float32).
    #[arg(long)]
    pub fp16_weights: bool,
    /// Put the weights in `<out>.data` beside the model (automatic past 1 GiB
    /// of weights, which keeps the file under protobuf's 2 GiB limit).
    #[arg(long)]
    pub external_data: bool,
    /// Data spec giving class names and preprocessing to a checkpoint that
    /// carries none.
    #[arg(long)]
    pub data_spec: Option<PathBuf>,
    #[command(flatten)]
    pub foreign: stages::ForeignCheckpointArgs,
}

pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let options = ExportOptions {
        fold_batch_norm: !args.keep_batch_norm,
        output: if args.output == "probabilities" { OutputKind::Probabilities } else { OutputKind::Logits },
        fp16_weights: args.fp16_weights,
        external_data: if args.external_data { ExternalData::Always } else { ExternalData::Auto },
    };
    let data = args.data_spec.as_deref().map(selftrain_data::DataSpec::load).transpose()?;
    let fallback = args.foreign.fallback(data.as_ref())?;
    let report = stages::export_onnx_with(&args.checkpoint, &args.out, &options, fallback.as_ref())?;
    println!("wrote {} ({}, {} bytes)", show(&report.onnx), report.model, report.bytes);
    Ok(())
}

#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Data spec of the corpus (data-specs/*.toml).
    #[arg(long)]
    pub spec: PathBuf,
    /// Split of the data spec.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Which images: all, labelled:N:SEED or unlabelled:N:SEED (every image
    /// not in the labelled subset).
    #[arg(long, default_value = "all")]
    pub subset: Subset,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The teacher: any ONNX classifier with one NCHW float input and one
    /// [batch, classes] output.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Folder of the shards (part-XXXXX-of-YYYYY.parquet).
    #[arg(long)]
    pub out: PathBuf,
    /// Shard to write (0-based). Defaults to SLURM_ARRAY_TASK_ID when set;
    /// without either, every shard is written in turn.
    #[arg(long, env = "SLURM_ARRAY_TASK_ID")]
    pub shard_index: Option<usize>,
    /// How many shards the corpus is split into.
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Classes kept per image (most probable first).
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Loader threads decoding and preparing batches ahead of inference.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Rewrite shards that are already complete.
    #[arg(long)]
    pub force: bool,
    /// libonnxruntime.so to load (default: ORT_DYLIB_PATH, then the one
    /// scripts/setup.sh installed).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
}

pub fn label(args: &LabelArgs, bars: &Bars) -> anyhow::Result<()> {
    if args.num_shards == 0 {
        anyhow::bail!("--num-shards: expected at least 1");
    }
    let job = LabelJob {
        model: args.model.clone(),
        corpus: Corpus::new(&args.corpus.spec, &args.corpus.split, args.corpus.subset)?,
        out_dir: args.out.clone(),
        shard_index: args.shard_index,
        num_shards: args.num_shards,
        batch_size: args.batch_size,
        topk: args.topk,
        threads: args.threads,
        workers: args.workers,
        force: args.force,
        ort_library: args.ort_library.clone(),
    };
    for o in stages::label(&job, bars)? {
        let how =
            if o.reused { "already complete".to_string() } else { format!("{:.0} images/s", o.images_per_second) };
        let skipped = if o.skipped > 0 { format!(", {} skipped", o.skipped) } else { String::new() };
        println!("{}: {} images ({how}{skipped})", show(&o.path), o.rows);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Folder holding every shard of one labelling run.
    #[arg(long)]
    pub shards: PathBuf,
    /// The filtered Parquet file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Minimum top probability (Noisy Student: 0.3).
    #[arg(long, default_value_t = 0.3)]
    pub threshold: f32,
    /// K: images per class after balancing.
    #[arg(long)]
    pub per_class: usize,
    /// Do not repeat images to fill classes with fewer than K.
    #[arg(long)]
    pub no_fill: bool,
    /// Seed of the random choice of repeated images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn filter(args: &FilterArgs) -> anyhow::Result<()> {
    let config =
        FilterConfig { threshold: args.threshold, per_class: args.per_class, fill: !args.no_fill, seed: args.seed };
    let report = stages::filter(&args.shards, &args.out, &config)?;
    println!("{:<20} {:>9} {:>9} {:>7} {:>10} {:>8}", "class", "predicted", "confident", "kept", "duplicates", "min p");
    for c in &report.classes {
        let min = c.min_confidence.map_or("-".to_string(), |p| format!("{p:.3}"));
        println!("{:<20} {:>9} {:>9} {:>7} {:>10} {:>8}", c.class, c.predicted, c.confident, c.kept, c.duplicates, min);
    }
    println!(
        "wrote {} ({} rows from {} shards, {} input rows)",
        show(&report.output),
        report.output_rows,
        report.shards,
        report.input_rows
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint (.safetensors) or an ONNX model (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Loader threads decoding and preparing batches.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub foreign: stages::ForeignCheckpointArgs,
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let corpus = Corpus::new(&args.corpus.spec, &args.corpus.split, args.corpus.subset)?;
    let (all, skipped_listing) = Split::open(&corpus.spec, &corpus.split, &|_| true)?;
    let set = all.select(&corpus.subset.rows_of(all.labels(), all.len())?);
    let labels = set.labels().map(<[i64]>::to_vec).ok_or_else(|| {
        anyhow::anyhow!(
            "evaluation needs labels, but split {:?} of {} has none",
            corpus.split,
            show(&corpus.spec.source)
        )
    })?;
    let samples = set.into_samples(&corpus.spec, false);
    let (correct, total, skipped) = if args.model.extension().is_some_and(|e| e == "onnx") {
        let mut teacher = Teacher::open(&args.model, 2, &TeacherOverrides::default(), None)?;
        if teacher.class_names.len() != corpus.spec.num_classes() {
            anyhow::bail!(
                "{} predicts {} classes, the data spec has {}",
                show(&args.model),
                teacher.class_names.len(),
                corpus.spec.num_classes()
            );
        }
        teacher.accuracy(samples, &labels, args.batch_size, args.workers)?
    } else {
        let device = args.device.device()?;
        let fallback = args.foreign.fallback(Some(&corpus.spec))?;
        let loaded = selftrain_model::load_model_with(&args.model, device, fallback.as_ref())?;
        if loaded.meta.class_names.len() != corpus.spec.num_classes() {
            anyhow::bail!(
                "{} predicts {} classes, the data spec has {}",
                show(&args.model),
                loaded.meta.class_names.len(),
                corpus.spec.num_classes()
            );
        }
        let p = &loaded.meta.preprocess;
        let normalize = selftrain_data::loader::Normalize { mean: p.mean.clone(), std: p.std.clone() };
        let e = selftrain_train::evaluate(
            &loaded.model,
            samples,
            &labels,
            &normalize,
            args.batch_size,
            args.workers,
            device,
        )?;
        (e.correct, e.total, e.skipped)
    };
    let skipped = skipped + skipped_listing.len();
    let note = if skipped > 0 { format!(", {skipped} image(s) skipped") } else { String::new() };
    println!(
        "accuracy: {:.4} ({correct}/{total}) on {} {}{note}",
        correct as f64 / total.max(1) as f64,
        corpus.split,
        corpus.subset
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Parameters, multiply-adds and the per-stage shape of a ResNet-RS size.
    Summary(SummaryArgs),
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// resnet-rs-50, -101, -152, -200, -270, -350 or -420.
    #[arg(long)]
    pub arch: String,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: i64,
    /// Input size in pixels (default: the size's training resolution).
    #[arg(long)]
    pub resolution: Option<i64>,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
    /// Blocks per stage, replacing the named depth, e.g. 1,1,1,1.
    #[arg(long, value_delimiter = ',')]
    pub depth: Option<Vec<usize>>,
    /// Width multiplier.
    #[arg(long)]
    pub width: Option<f64>,
    /// The small-input form (28-32 px images).
    #[arg(long)]
    pub small_input: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn model(command: &ModelCommand) -> anyhow::Result<()> {
    let ModelCommand::Summary(args) = command;
    let mut spec = ModelSpec::named(&args.arch);
    spec.depth = match args.depth.as_deref() {
        None => None,
        Some(&[a, b, c, d]) => Some([a, b, c, d]),
        Some(other) => anyhow::bail!("--depth: expected four blocks-per-stage numbers, found {other:?}"),
    };
    spec.width = args.width;
    spec.small_input = Some(args.small_input);
    let config = spec.resolve(args.channels, args.num_classes)?;
    let resolution =
        args.resolution.or_else(|| FAMILY.iter().find(|f| f.0 == args.arch).map(|f| f.4)).context("no resolution")?;
    let s = selftrain_model::summary::summarize(&config, resolution);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("{} at {}x{}, {} classes", s.name, resolution, resolution, s.num_classes);
    println!("parameters: {}", s.parameters);
    println!("multiply-adds: {:.3} G", s.multiply_adds as f64 / 1e9);
    println!("{:<8} {:>6} {:>9} {:>9} {:>12} {:>6}", "stage", "blocks", "channels", "output", "MACs (M)", "sd");
    for st in &s.stages {
        println!(
            "{:<8} {:>6} {:>9} {:>9} {:>12.1} {:>6.3}",
            st.stage,
            st.blocks,
            st.channels,
            format!("{}x{}", st.height, st.width),
            st.multiply_adds as f64 / 1e6,
            st.stochastic_depth
        );
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a PNG grid of images as the trainer sees them (after the
    /// augmentation), to look at the noise rather than read about it.
    Preview(PreviewArgs),
    /// Build a corpus from a data set's images, re-encoded at any size and
    /// count, as a folder (class subfolders or flat) or WebDataset tar shards.
    Synth(SynthArgs),
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// none, flip-crop or randaugment:N:M.
    #[arg(long, default_value = "randaugment:2:15")]
    pub augment: selftrain_data::augment::Augment,
    /// Images in the grid.
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Images to write (the source images repeat as needed).
    #[arg(long)]
    pub count: usize,
    /// Side of the written images in pixels (bicubic resize).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// folder (class subfolders), flat (unlabelled folder) or tar.
    #[arg(long, default_value = "flat", value_parser = ["folder", "flat", "tar"])]
    pub layout: String,
    /// Samples per tar shard.
    #[arg(long, default_value_t = 1000)]
    pub per_shard: usize,
    /// jpeg or png.
    #[arg(long, default_value = "jpeg", value_parser = ["jpeg", "png"])]
    pub encoding: String,
    #[arg(long, default_value_t = 90)]
    pub jpeg_quality: u8,
    /// Paint grey source images in two colours per image, so the corpus
    /// holds 3-channel colour images (for throughput work on colour JPEGs).
    #[arg(long)]
    pub colour: bool,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn data(command: &DataCommand) -> anyhow::Result<()> {
    use selftrain_data::synth::{Encoding, Layout, SynthOptions, preview_grid, synthesise};
    match command {
        DataCommand::Preview(a) => {
            let corpus = Corpus::new(&a.corpus.spec, &a.corpus.split, a.corpus.subset)?;
            let (all, _) = Split::open(&corpus.spec, &corpus.split, &|_| true)?;
            let set = all.select(&corpus.subset.rows_of(all.labels(), all.len())?);
            let train = a.augment != selftrain_data::augment::Augment::None;
            let (n, w, h) =
                preview_grid(set.into_samples(&corpus.spec, train).as_ref(), a.count, a.augment, a.seed, &a.out)?;
            println!("wrote {} ({n} images, {w}x{h} px, augment {})", show(&a.out), a.augment);
        }
        DataCommand::Synth(a) => {
            let corpus = Corpus::new(&a.corpus.spec, &a.corpus.split, a.corpus.subset)?;
            let set = corpus.subset.apply(&ImageSet::load_split(&corpus.spec, &corpus.split)?)?;
            let encoding = if a.encoding == "png" { Encoding::Png } else { Encoding::Jpeg { quality: a.jpeg_quality } };
            let layout = match a.layout.as_str() {
                "folder" => Layout::ClassFolders,
                "tar" => Layout::Tar { per_shard: a.per_shard },
                _ => Layout::Flat,
            };
            let options = SynthOptions { count: a.count, size: a.size, encoding, layout, colour: a.colour };
            let r = synthesise(&set, &corpus.spec.classes, &options, &a.out)?;
            println!("wrote {} images in {} files ({} bytes) under {}", r.images, r.files, r.bytes, show(&a.out));
        }
    }
    Ok(())
}
