//! Accuracy of a model on a labelled image set.

use selftrain_data::ImageSet;
use selftrain_data::loader::Normalize;
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
}

/// Top-1 accuracy of `model` (evaluation mode) on `set`.
pub fn evaluate(
    model: &ResNetRs,
    set: &ImageSet,
    normalize: &Normalize,
    batch_size: usize,
    device: Device,
) -> Result<Evaluation, TrainError> {
    let labels = set.require_labels("evaluation")?;
    let k = model.config.num_classes as usize;
    let mut correct_by_class = vec![0usize; k];
    let mut total_by_class = vec![0usize; k];
    let rows: Vec<usize> = (0..set.len()).collect();
    tch::no_grad(|| -> Result<(), TrainError> {
        for chunk in rows.chunks(batch_size.max(1)) {
            let pixels = normalize.batch(set, chunk);
            let x = Tensor::from_slice(&pixels)
                .view([chunk.len() as i64, set.channels as i64, set.height as i64, set.width as i64])
                .to_device(device);
            let predicted = Vec::<i64>::try_from(model.forward_t(&x, false).argmax(1, false).to_kind(Kind::Int64).to_device(Device::Cpu))?;
            for (&row, &p) in chunk.iter().zip(&predicted) {
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
    let total = set.len();
    Ok(Evaluation {
        accuracy: correct as f64 / total.max(1) as f64,
        correct,
        total,
        per_class: correct_by_class.iter().zip(&total_by_class).map(|(c, t)| *c as f64 / (*t).max(1) as f64).collect(),
    })
}
