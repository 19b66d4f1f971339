//! `selftrain bench`: throughput figures for the benchmark scripts in
//! `benches/`, which run the reference implementations side by side.

use std::time::Instant;

use clap::{Args, Subcommand};
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_label::{Teacher, TeacherOverrides};
use selftrain_model::onnx::{ExportOptions, export};
use selftrain_model::{CheckpointMeta, ModelSpec, ResNetRs};
use serde::Serialize;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training-step and inference images/s of a ResNet-RS model: tch
    /// forward+backward+SGD step, tch evaluation forward, ONNX Runtime
    /// inference of the exported graph. Prints JSON.
    Model(ModelBenchArgs),
    /// Images/s of the data loader on a corpus: decode, crop, augment and
    /// normalise on worker threads, batches consumed as fast as they come.
    /// Prints JSON.
    Loader(LoaderBenchArgs),
}

#[derive(Debug, Args)]
pub struct LoaderBenchArgs {
    #[command(flatten)]
    pub corpus: crate::commands::CorpusArgs,
    /// Side of the output crops in pixels.
    #[arg(long, default_value_t = 224)]
    pub resolution: usize,
    /// `none`, `flip-crop` or `randaugment:N:M`; with anything but `none`
    /// the training crop (random resized) is used, else the centre crop.
    #[arg(long, default_value = "randaugment:2:15")]
    pub augment: selftrain_data::augment::Augment,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Images to time (cycling through the corpus), after one warm-up batch.
    #[arg(long, default_value_t = 2048)]
    pub images: usize,
}

#[derive(Debug, Serialize)]
struct LoaderBench {
    images: usize,
    failed: usize,
    resolution: usize,
    workers: usize,
    batch: usize,
    augment: String,
    seconds: f64,
    images_per_second: f64,
}

fn bench_loader(a: &LoaderBenchArgs) -> anyhow::Result<()> {
    use selftrain_data::loader::{Loader, LoaderConfig, Normalize};
    use selftrain_data::{DataSpec, Split};
    let spec = DataSpec::load(&a.corpus.spec)?;
    let (split, _) = Split::open(&spec, &a.corpus.split, &|_| true)?;
    if split.is_empty() {
        anyhow::bail!("{}: split {:?} has no usable images", crate::show(&a.corpus.spec), a.corpus.split);
    }
    let train = a.augment != selftrain_data::augment::Augment::None;
    let mut spec_train = spec.clone();
    if train {
        spec_train.train_crop = selftrain_data::spec::TrainCrop::RandomResized;
    }
    let samples = split.resized(a.resolution, a.resolution).into_samples(&spec_train, train);
    let n = samples.len();
    let batch = a.batch.max(1);
    let total = a.images.div_ceil(batch) + 1;
    let batches: Vec<Vec<usize>> = (0..total).map(|b| (b * batch..(b + 1) * batch).map(|i| i % n).collect()).collect();
    let normalize = Normalize { mean: spec.mean.clone(), std: spec.std.clone() };
    let config =
        LoaderConfig { workers: a.workers.max(1), prefetch: 2 * a.workers.max(1), augment: a.augment, seed: 0 };
    let mut loader = Loader::start(samples, batches, normalize, &config);
    let first = loader.next().ok_or_else(|| anyhow::anyhow!("the loader produced nothing"))?;
    let mut failed = first.failed.len();
    let start = Instant::now();
    let mut images = 0;
    for b in loader {
        images += b.rows.len();
        failed += b.failed.len();
    }
    let seconds = start.elapsed().as_secs_f64();
    let result = LoaderBench {
        images,
        failed,
        resolution: a.resolution,
        workers: a.workers,
        batch,
        augment: a.augment.to_string(),
        seconds,
        images_per_second: images as f64 / seconds.max(1e-9),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    #[arg(long, default_value = "resnet-rs-50")]
    pub arch: String,
    /// Blocks per stage, e.g. 1,1,1,1.
    #[arg(long, value_delimiter = ',')]
    pub depth: Option<Vec<usize>>,
    #[arg(long)]
    pub width: Option<f64>,
    #[arg(long)]
    pub small_input: bool,
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: i64,
    #[arg(long, default_value_t = 160)]
    pub resolution: i64,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    /// Intra-op threads for libtorch and ONNX Runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed training steps (after the warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Skip the ONNX Runtime measurement.
    #[arg(long)]
    pub no_onnx: bool,
    /// Run the trunk in channels-last memory order (as `optim.channels_last`).
    #[arg(long)]
    pub channels_last: bool,
    #[command(flatten)]
    pub device: crate::DeviceArgs,
}

#[derive(Debug, Serialize)]
struct ModelBench {
    model: String,
    parameters: i64,
    batch: i64,
    resolution: i64,
    threads: usize,
    device: String,
    channels_last: bool,
    train_images_per_second: f64,
    eval_images_per_second: f64,
    onnx_images_per_second: Option<f64>,
}

fn timed(steps: usize, warmup: usize, images: i64, mut step: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        step();
    }
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    (steps as i64 * images) as f64 / start.elapsed().as_secs_f64()
}

pub fn bench(command: &BenchCommand) -> anyhow::Result<()> {
    let a = match command {
        BenchCommand::Model(a) => a,
        BenchCommand::Loader(a) => return bench_loader(a),
    };
    tch::set_num_threads(a.threads as i32);
    let device = a.device.device()?;
    let mut spec = ModelSpec::named(&a.arch);
    spec.depth = match a.depth.as_deref() {
        None => None,
        Some(&[x, y, z, w]) => Some([x, y, z, w]),
        Some(other) => anyhow::bail!("--depth: expected four numbers, found {other:?}"),
    };
    spec.width = a.width;
    spec.small_input = Some(a.small_input);
    let config = spec.resolve(a.channels, a.num_classes)?;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let mut model = ResNetRs::new(&vs.root(), &config);
    if a.channels_last {
        model.use_channels_last();
    }
    let parameters = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let x = Tensor::randn([a.batch, a.channels, a.resolution, a.resolution], (Kind::Float, device));
    let y = Tensor::randint(a.num_classes, [a.batch], (Kind::Int64, device));
    let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 4e-5, nesterov: true }.build(&vs, 0.01)?;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let train = timed(a.steps, a.warmup, a.batch, || {
        let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        sync();
    });
    let eval = tch::no_grad(|| {
        timed(a.steps * 2, a.warmup, a.batch, || {
            let _ = model.forward_t(&x, false);
            sync();
        })
    });
    let onnx = if a.no_onnx {
        None
    } else {
        let dir = std::env::temp_dir().join(format!("selftrain-bench-{}", std::process::id()));
        let path = dir.join("model.onnx");
        let size = a.resolution as usize;
        let meta = CheckpointMeta {
            model: config.clone(),
            class_names: (0..a.num_classes).map(|i| i.to_string()).collect(),
            preprocess: Preprocess {
                channels: a.channels as usize,
                height: size,
                width: size,
                mean: vec![0.0; a.channels as usize],
                std: vec![1.0; a.channels as usize],
                resize: "none".into(),
            },
            role: "bench".into(),
        };
        export(&model, &meta, "bench", &ExportOptions::default(), &path)?;
        let mut teacher = Teacher::open(&path, a.threads, &TeacherOverrides::default(), None)?;
        let pixels = Vec::<f32>::try_from(x.to_device(Device::Cpu).reshape([-1]))?;
        let mut failure = None;
        let rate = timed(a.steps * 2, a.warmup, a.batch, || {
            if let Err(e) = teacher.predict(pixels.clone(), a.batch as usize) {
                failure = Some(e);
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(e) = failure {
            return Err(e.into());
        }
        Some(rate)
    };
    let result = ModelBench {
        model: config.name,
        parameters,
        batch: a.batch,
        resolution: a.resolution,
        threads: a.threads,
        device: format!("{device:?}"),
        channels_last: a.channels_last,
        train_images_per_second: train,
        eval_images_per_second: eval,
        onnx_images_per_second: onnx,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
