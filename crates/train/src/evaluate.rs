//! Accuracy of a model on a labelled image set.

use std::sync::Arc;

use selftrain_data::Samples;
use selftrain_data::augment::Augment;
use selftrain_data::loader::{Loader, LoaderConfig, Normalize};
use selftrain_model::ResNetRs;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::TrainError;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub correct: usize,
    pub total: usize,
    /// Accuracy of each class (by true label).
    pub per_class: Vec<f64>,
    /// Images that could not be decoded and were left out of `total`.
    pub skipped: usize,
}

/// Top-1 accuracy of `model` (evaluation mode) on `set`, whose row `r` has
/// true class `labels[r]`; `workers` threads decode and prepare batches.
pub fn evaluate(
    model: &ResNetRs,
    set: Arc<dyn Samples>,
    labels: &[i64],
    normalize: &Normalize,
    batch_size: usize,
    workers: usize,
    device: Device,
) -> Result<Evaluation, TrainError> {
    let k = model.config.num_classes as usize;
    let mut correct_by_class = vec![0usize; k];
    let mut total_by_class = vec![0usize; k];
    let rows: Vec<usize> = (0..set.len()).collect();
    let batches: Vec<Vec<usize>> = rows.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    let config =
        LoaderConfig { workers: workers.max(1), prefetch: 2 * workers.max(1), augment: Augment::None, seed: 0 };
    let mut skipped = 0;
    tch::no_grad(|| -> Result<(), TrainError> {
        for batch in Loader::start(set.clone(), batches, normalize.clone(), &config) {
            skipped += batch.failed.len();
            if batch.rows.is_empty() {
                continue;
            }
            let [n, c, h, w] = batch.shape.map(|d| d as i64);
            let x = Tensor::from_slice(&batch.pixels).view([n, c, h, w]).to_device(device);
            let predicted = Vec::<i64>::try_from(
                model.forward_t(&x, false).argmax(1, false).to_kind(Kind::Int64).to_device(Device::Cpu),
            )?;
            for (&row, &p) in batch.rows.iter().zip(&predicted) {
                let truth = labels[row] as usize;
                total_by_class[truth] += 1;
                if p as usize == truth {
                    correct_by_class[truth] += 1;
                }
            }
        }
        Ok(())
    })?;
    let correct: usize = correct_by_class.iter().sum();
    let total: usize = total_by_class.iter().sum();
    Ok(Evaluation {
        accuracy: correct as f64 / total.max(1) as f64,
        correct,
        total,
        per_class: correct_by_class.iter().zip(&total_by_class).map(|(c, t)| *c as f64 / (*t).max(1) as f64).collect(),
        skipped,
    })
}
