//! The training loop shared by teachers and students.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use selftrain_data::loader::{Loader, LoaderConfig, Normalize};
use selftrain_data::samples::Concat;
use selftrain_data::schema::model_meta::Preprocess;
use selftrain_data::{DataSpec, Progress, Samples, Split};
use selftrain_model::resnet_rs::NO_DECAY_GROUP;
use selftrain_model::{CheckpointMeta, ResNetRs, checkpoint};
use serde::Serialize;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::config::{PseudoTargets, TrainConfig};
use crate::error::TrainError;
use crate::evaluate::{Evaluation, evaluate};
use crate::pseudo::read_pseudo_labels;

/// One fixed-format line of metrics per epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: f64,
    pub lr: f64,
    pub images_per_second: f64,
    /// Seconds the step loop waited for the loader.
    pub data_wait_seconds: f64,
}

/// What a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub checkpoint: PathBuf,
    pub model: String,
    pub parameters: i64,
    pub labelled_images: usize,
    pub pseudo_labelled_rows: usize,
    pub epochs: Vec<EpochMetrics>,
    pub test: Option<Evaluation>,
    pub seconds: f64,
    pub device: String,
    /// Samples left out because they could not be listed or decoded.
    pub skipped_images: usize,
}

/// Per-row training targets: a full distribution over the classes.
struct Targets {
    k: usize,
    values: Vec<f32>,
}

impl Targets {
    fn push_hard(&mut self, class: usize, smoothing: f64) {
        let off = (smoothing / self.k as f64) as f32;
        let start = self.values.len();
        self.values.extend(std::iter::repeat_n(off, self.k));
        self.values[start + class] += (1.0 - smoothing) as f32;
    }

    fn push_soft(&mut self, classes: &[i32], probs: &[f32]) {
        let start = self.values.len();
        self.values.extend(std::iter::repeat_n(0.0, self.k));
        let total: f32 = probs.iter().sum::<f32>().max(1e-12);
        for (c, p) in classes.iter().zip(probs) {
            self.values[start + *c as usize] += p / total;
        }
    }

    fn rows(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter().flat_map(|r| &self.values[r * self.k..(r + 1) * self.k]).copied().collect()
    }
}

/// The preprocessing a model trained on `spec` expects.
pub fn preprocess_of(spec: &DataSpec) -> Preprocess {
    Preprocess {
        channels: spec.channels,
        height: spec.height,
        width: spec.width,
        mean: spec.mean.clone(),
        std: spec.std.clone(),
        resize: match spec.format {
            selftrain_data::spec::Format::Idx => "none".into(),
            _ => format!("bicubic-centre-crop:{}", spec.crop_fraction),
        },
    }
}

/// The learning rate at `step` of `total`: linear warm-up, then cosine decay.
pub fn learning_rate(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    0.5 * peak * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// EMA update of every variable of `ema` from `live` (BN statistics too),
/// with the ramp `min(decay, (1 + n) / (10 + n))`.
fn update_ema(ema: &HashMap<String, Tensor>, live: &HashMap<String, Tensor>, decay: f64, step: usize) {
    let d = decay.min((1.0 + step as f64) / (10.0 + step as f64));
    tch::no_grad(|| {
        for (name, e) in ema {
            let mut e = e.shallow_clone();
            let _ = e.lerp_(&live[name], 1.0 - d);
        }
    });
}

/// Trains a model as `config` says and writes `out_dir/checkpoint.safetensors`.
pub fn train(
    config: &TrainConfig,
    out_dir: &Path,
    device: Device,
    progress: &dyn Progress,
) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    let o = &config.optim;
    if o.threads > 0 {
        tch::set_num_threads(o.threads as i32);
    }
    tch::manual_seed(o.seed as i64);
    let spec = DataSpec::load(&config.data.spec)?;
    let k = spec.num_classes();
    let train_size = resolution(&spec, config.data.train_resolution, "train_resolution")?;
    let test_size = resolution(&spec, config.data.test_resolution, "test_resolution")?;
    // Listing only for corpus formats: the loader decodes images as batches
    // need them. IDX sets are held in memory.
    let (full_train, skipped_listing) = Split::open(&spec, &config.data.train_split, &|_| true)?;
    warn_skipped(&config.data.train_split, &skipped_listing);
    let no_labels = || {
        TrainError::Data(selftrain_data::DataError::Invalid(format!(
            "training needs labelled images, but split {:?} of {} has no labels",
            config.data.train_split,
            spec.source.display()
        )))
    };
    let labelled = full_train.select(&config.data.subset.rows_of(full_train.labels(), full_train.len())?);
    let labelled_count = labelled.len();
    let mut targets = Targets { k, values: Vec::new() };
    for &l in labelled.labels().ok_or_else(no_labels)? {
        targets.push_hard(l as usize, o.label_smoothing);
    }

    // Rows 0..labelled_count are labelled; after them, pseudo-labelled rows.
    let mut parts: Vec<Arc<dyn Samples>> = vec![labelled.resized(train_size.0, train_size.1).into_samples(&spec, true)];
    let mut pseudo_rows = 0;
    if let Some(p) = &config.pseudo {
        let pseudo = read_pseudo_labels(&p.labels)?;
        if pseudo.class_names != spec.classes {
            return Err(TrainError::Pseudo {
                path: p.labels.clone(),
                message: format!("class names {:?} differ from the data spec's {:?}", pseudo.class_names, spec.classes),
            });
        }
        let source = if p.split == config.data.train_split {
            full_train
        } else {
            let (source, skipped) = Split::open(&spec, &p.split, &|_| true)?;
            warn_skipped(&p.split, &skipped);
            source
        };
        let index: HashMap<&str, usize> = source.ids().iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let mut rows = Vec::with_capacity(pseudo.ids.len());
        for id in &pseudo.ids {
            let row = index.get(id.as_str()).ok_or_else(|| TrainError::Pseudo {
                path: p.labels.clone(),
                message: format!("image id {id:?} is not in split {:?} of {}", p.split, spec.source.display()),
            })?;
            rows.push(*row);
        }
        let extra = source.select(&rows).without_labels();
        for i in 0..extra.len() {
            match p.targets {
                PseudoTargets::Hard => targets.push_hard(pseudo.labels[i] as usize, o.label_smoothing),
                PseudoTargets::Soft => targets.push_soft(&pseudo.topk_classes[i], &pseudo.topk_probs[i]),
            }
        }
        pseudo_rows = extra.len();
        parts.push(extra.resized(train_size.0, train_size.1).into_samples(&spec, true));
    }
    let images: Arc<dyn Samples> =
        Arc::new(Concat::new(parts).map_err(|e| TrainError::Data(selftrain_data::DataError::Invalid(e)))?);

    let model_config = config.model.resolve(spec.channels as i64, k as i64)?;
    let mut vs = VarStore::new(device);
    let mut model = ResNetRs::new(&vs.root(), &model_config);
    if let Some(init) = &config.init {
        selftrain_model::Checkpoint::read(init)?.load_into(&mut vs)?;
        tracing::info!("initialised from {}", init.display());
    }
    let parameters: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let mut ema_vs = VarStore::new(device);
    let mut ema_model = ResNetRs::new(&ema_vs.root(), &model_config);
    if o.channels_last {
        // Before the optimiser is built: it holds the variables it updates.
        model.use_channels_last();
        ema_model.use_channels_last();
    }
    ema_vs.copy(&vs)?;
    let live_vars = vs.variables();
    let ema_vars = ema_vs.variables();

    let labelled_per_step = o.batch_size;
    let pseudo_per_step = config.pseudo.as_ref().map_or(0, |p| p.ratio * o.batch_size);
    let steps_per_epoch = if pseudo_rows > 0 {
        pseudo_rows.div_ceil(pseudo_per_step)
    } else {
        labelled_count.div_ceil(labelled_per_step)
    };
    let total_steps = steps_per_epoch * o.epochs;
    let warmup_steps = ((o.warmup_epochs * steps_per_epoch as f64) as usize).min(total_steps);
    let peak_lr = o.lr_per_256 * (labelled_per_step + pseudo_per_step) as f64 / 256.0;
    let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: o.weight_decay, nesterov: true }.build(&vs, peak_lr)?;
    opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0);
    let normalize = Normalize { mean: spec.mean.clone(), std: spec.std.clone() };
    tracing::info!(
        "training {} ({} parameters) on {:?}: {} labelled + {} pseudo-labelled rows, {} steps/epoch, peak lr {:.4}",
        model_config.name,
        parameters,
        device,
        labelled_count,
        pseudo_rows,
        steps_per_epoch,
        peak_lr
    );

    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut labelled_order: Vec<usize> = (0..labelled_count).collect();
    let mut labelled_cursor = labelled_count; // forces a shuffle first
    let mut step = 0;
    let mut skipped_images = 0;
    let mut epochs = Vec::new();
    for epoch in 0..o.epochs {
        // The epoch's batches: labelled rows cycle through reshuffled passes;
        // pseudo-labelled rows are shuffled once per epoch.
        let mut pseudo_order: Vec<usize> = (labelled_count..labelled_count + pseudo_rows).collect();
        pseudo_order.shuffle(&mut rng);
        let mut batches = Vec::with_capacity(steps_per_epoch);
        for s in 0..steps_per_epoch {
            let mut rows = Vec::with_capacity(labelled_per_step + pseudo_per_step);
            let want = if pseudo_rows > 0 {
                labelled_per_step
            } else {
                labelled_per_step.min(labelled_count - s * labelled_per_step)
            };
            for _ in 0..want {
                if labelled_cursor == labelled_count {
                    labelled_order.shuffle(&mut rng);
                    labelled_cursor = 0;
                }
                rows.push(labelled_order[labelled_cursor]);
                labelled_cursor += 1;
            }
            if pseudo_rows > 0 {
                let from = s * pseudo_per_step;
                rows.extend_from_slice(&pseudo_order[from..(from + pseudo_per_step).min(pseudo_rows)]);
            }
            batches.push(rows);
        }
        let loader_config = LoaderConfig {
            workers: o.workers.max(1),
            prefetch: 2 * o.workers.max(1),
            augment: o.augment,
            seed: o.seed.wrapping_add(epoch as u64 * 1_000_003),
        };
        let mut loader = Loader::start(images.clone(), batches, normalize.clone(), &loader_config);
        progress.begin(&format!("{} epoch {}/{}", config.role, epoch + 1, o.epochs), steps_per_epoch as u64);
        let epoch_start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        let mut lr = peak_lr;
        for batch in loader.by_ref() {
            if !batch.failed.is_empty() {
                let (row, reason) = &batch.failed[0];
                tracing::warn!(
                    "{} image(s) left out of a batch; first: {} at {}: {reason}",
                    batch.failed.len(),
                    images.id(*row),
                    images.location(*row)
                );
                skipped_images += batch.failed.len();
            }
            if batch.rows.is_empty() {
                step += 1;
                progress.advance(1);
                continue;
            }
            lr = learning_rate(peak_lr, step, warmup_steps, total_steps);
            opt.set_lr(lr);
            let n = batch.rows.len() as i64;
            let [_, c, h, w] = batch.shape.map(|d| d as i64);
            let x = Tensor::from_slice(&batch.pixels).view([n, c, h, w]).to_device(device);
            let t = Tensor::from_slice(&targets.rows(&batch.rows)).view([n, k as i64]).to_device(device);
            // TODO: every step runs in float32. The paper trained in
            // bfloat16; tch's `autocast` only switches on CUDA's float16
            // autocast (no dtype choice), so bf16 needs a binding of
            // at::autocast's dtype setter, and a GPU to check it on.
            let logits = model.forward_t(&x, true);
            let loss =
                -(logits.log_softmax(-1, Kind::Float) * &t).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
            opt.backward_step(&loss);
            if o.ema_decay > 0.0 {
                update_ema(&ema_vars, &live_vars, o.ema_decay, step);
            }
            loss_sum += loss.double_value(&[]) * n as f64;
            correct += logits.argmax(1, false).eq_tensor(&t.argmax(1, false)).sum(Kind::Int64).int64_value(&[]);
            seen += n as usize;
            step += 1;
            progress.advance(1);
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            lr,
            images_per_second: seen as f64 / seconds.max(1e-9),
            data_wait_seconds: loader.waited().as_secs_f64(),
        };
        tracing::info!(
            "{} epoch {:>3}/{} loss {:.4} train_acc {:.4} lr {:.5} images/s {:.0} data_wait {:.1}s",
            config.role,
            metrics.epoch,
            o.epochs,
            metrics.loss,
            metrics.train_accuracy,
            metrics.lr,
            metrics.images_per_second,
            metrics.data_wait_seconds
        );
        progress.finish("");
        epochs.push(metrics);
    }
    // TODO: training restarts from scratch when interrupted; saving the
    // optimiser's momentum buffers would allow resuming mid-run.

    let (final_vs, final_model) = if o.ema_decay > 0.0 { (&ema_vs, &ema_model) } else { (&vs, &model) };
    let test = if config.data.test_split.is_empty() {
        None
    } else {
        let (test_set, skipped) = Split::open(&spec, &config.data.test_split, &|_| true)?;
        warn_skipped(&config.data.test_split, &skipped);
        let labels = test_set.labels().map(<[i64]>::to_vec).ok_or_else(|| {
            TrainError::Data(selftrain_data::DataError::Invalid(format!(
                "evaluation needs labelled images, but split {:?} of {} has no labels",
                config.data.test_split,
                spec.source.display()
            )))
        })?;
        progress.begin(&format!("{} evaluate on {}", config.role, config.data.test_split), 1);
        let test_set = test_set.resized(test_size.0, test_size.1).into_samples(&spec, false);
        let e = evaluate(final_model, test_set, &labels, &normalize, 500, o.workers, device)?;
        progress.finish(&format!("{} test accuracy {:.4}", config.role, e.accuracy));
        Some(e)
    };
    let meta = CheckpointMeta {
        model: model_config.clone(),
        class_names: spec.classes.clone(),
        preprocess: Preprocess { height: test_size.0, width: test_size.1, ..preprocess_of(&spec) },
        role: config.role.clone(),
    };
    let checkpoint_path = out_dir.join("checkpoint.safetensors");
    checkpoint::save(final_vs, &meta, &checkpoint_path)?;
    Ok(TrainReport {
        checkpoint: checkpoint_path,
        model: model_config.name,
        parameters,
        labelled_images: labelled_count,
        pseudo_labelled_rows: pseudo_rows,
        epochs,
        test,
        seconds: started.elapsed().as_secs_f64(),
        device: format!("{device:?}"),
        skipped_images: skipped_images + skipped_listing.len(),
    })
}

/// `(height, width)` of images at a configured resolution, or the spec's.
fn resolution(spec: &DataSpec, side: Option<usize>, key: &str) -> Result<(usize, usize), TrainError> {
    match side {
        None => Ok((spec.height, spec.width)),
        Some(s) if s > 0 && spec.format != selftrain_data::spec::Format::Idx => Ok((s, s)),
        Some(s) => Err(TrainError::Data(selftrain_data::DataError::Invalid(format!(
            "key `data.{key}` = {s}: expected a positive size, for a corpus format (folder, tar, parquet); \
             {} is {:?}, whose images are used at their stored {}x{}",
            spec.source.display(),
            spec.format,
            spec.height,
            spec.width
        )))),
    }
}

fn warn_skipped(split: &str, skipped: &[selftrain_data::corpus::Skipped]) {
    if let Some(first) = skipped.first() {
        tracing::warn!(
            "{} sample(s) of split {split:?} skipped; first: {} at {}: {}",
            skipped.len(),
            first.id,
            first.location,
            first.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        assert!((learning_rate(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 100, 10, 100).abs() < 1e-12);
    }

    #[test]
    fn hard_targets_are_smoothed_and_soft_targets_renormalised() {
        let mut t = Targets { k: 4, values: Vec::new() };
        t.push_hard(2, 0.2);
        t.push_soft(&[1, 3], &[0.6, 0.2]);
        let v = t.rows(&[0, 1]);
        assert_eq!(&v[..4], &[0.05, 0.05, 0.85, 0.05]);
        assert!((v[5] - 0.75).abs() < 1e-6 && (v[7] - 0.25).abs() < 1e-6 && v[4] == 0.0);
    }
}
