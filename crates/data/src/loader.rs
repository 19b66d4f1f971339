//! A parallel batch loader: worker threads decode (for encoded corpora),
//! crop, augment and normalise batches ahead of the consumer through a
//! bounded queue, and the loader records how long the consumer waited for
//! data. An image that cannot be decoded leaves its batch with the reason;
//! the batch carries on without it.
//!
//! Which rows form which batch is the caller's decision (the trainer mixes
//! labelled and pseudo-labelled rows); the loader only produces pixels.
//! Augmentation randomness is seeded per batch, so results do not depend on
//! the number of workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::{Augment, ImageMut};
use crate::images::ImageSet;
use crate::samples::Samples;

/// Per-channel normalisation of `[0, 1]`-scaled pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Writes `(pixel / 255 - mean[c]) / std[c]` for a CHW image into `out`.
    pub fn apply(&self, pixels: &[u8], channels: usize, out: &mut [f32]) {
        let plane = pixels.len() / channels;
        for c in 0..channels {
            let scale = 1.0 / (255.0 * self.std[c]);
            let shift = self.mean[c] / self.std[c];
            let (src, dst) = (&pixels[c * plane..(c + 1) * plane], &mut out[c * plane..(c + 1) * plane]);
            for (o, &p) in dst.iter_mut().zip(src) {
                *o = f32::from(p) * scale - shift;
            }
        }
    }

    /// Normalises rows of `set` into one NCHW `f32` buffer.
    pub fn batch(&self, set: &ImageSet, rows: &[usize]) -> Vec<f32> {
        let size = set.image_size();
        let mut out = vec![0f32; rows.len() * size];
        for (k, &r) in rows.iter().enumerate() {
            self.apply(set.image(r), set.channels, &mut out[k * size..(k + 1) * size]);
        }
        out
    }
}

/// Settings of a [`Loader`].
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Worker threads (at least one).
    pub workers: usize,
    /// Finished batches that may wait in the queue.
    pub prefetch: usize,
    pub augment: Augment,
    /// Base seed of the augmentation; mixed with the batch number.
    pub seed: u64,
}

/// One batch: the rows it holds and their pixels as NCHW `f32`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Rows whose images are in `pixels`, in order.
    pub rows: Vec<usize>,
    pub pixels: Vec<f32>,
    /// `[n, channels, height, width]`, `n = rows.len()`.
    pub shape: [usize; 4],
    /// Rows asked for but left out, with the reason.
    pub failed: Vec<(usize, String)>,
}

/// Iterator over prepared batches, in the order they were asked for.
pub struct Loader {
    receiver: Receiver<(usize, Batch)>,
    pending: BTreeMap<usize, Batch>,
    next: usize,
    total: usize,
    waited: Duration,
}

impl Loader {
    /// Starts workers preparing `batches` (lists of rows of `set`).
    pub fn start(
        set: Arc<dyn Samples>,
        batches: Vec<Vec<usize>>,
        normalize: Normalize,
        config: &LoaderConfig,
    ) -> Loader {
        let total = batches.len();
        let (sender, receiver) = sync_channel(config.prefetch.max(1));
        let batches = Arc::new(batches);
        let cursor = Arc::new(AtomicUsize::new(0));
        for _ in 0..config.workers.max(1) {
            let (set, batches, cursor, sender) = (set.clone(), batches.clone(), cursor.clone(), sender.clone());
            let (normalize, augment, seed) = (normalize.clone(), config.augment, config.seed);
            std::thread::spawn(move || {
                loop {
                    let index = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(rows) = batches.get(index) else { break };
                    let batch = prepare(set.as_ref(), rows, &normalize, augment, seed, index);
                    if sender.send((index, batch)).is_err() {
                        break; // the loader was dropped
                    }
                }
            });
        }
        Loader { receiver, pending: BTreeMap::new(), next: 0, total, waited: Duration::ZERO }
    }

    /// Time the consumer spent blocked waiting for a batch.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Prepares one batch: decode or copy, crop, augment, normalise.
pub fn prepare(
    set: &dyn Samples,
    rows: &[usize],
    normalize: &Normalize,
    augment: Augment,
    seed: u64,
    index: usize,
) -> Batch {
    let [channels, height, width] = set.shape();
    let size = channels * height * width;
    let mut pixels = vec![0f32; rows.len() * size];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut scratch = vec![0u8; size];
    let (mut kept, mut failed) = (Vec::with_capacity(rows.len()), Vec::new());
    let pad_crop = !set.random_crops();
    for &r in rows {
        if let Err(reason) = set.fill(r, &mut rng, &mut scratch) {
            failed.push((r, reason));
            continue;
        }
        let mut img = ImageMut { pixels: &mut scratch, channels, height, width };
        augment.apply_with(&mut img, &mut rng, pad_crop);
        let k = kept.len();
        normalize.apply(&scratch, channels, &mut pixels[k * size..(k + 1) * size]);
        kept.push(r);
    }
    pixels.truncate(kept.len() * size);
    Batch { shape: [kept.len(), channels, height, width], rows: kept, pixels, failed }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let started = Instant::now();
        while !self.pending.contains_key(&self.next) {
            match self.receiver.recv() {
                Ok((index, batch)) => {
                    self.pending.insert(index, batch);
                }
                Err(_) => return None, // every worker stopped
            }
        }
        self.waited += started.elapsed();
        let batch = self.pending.remove(&self.next);
        self.next += 1;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        ImageSet {
            ids: (0..n).map(|i| i.to_string()).collect(),
            labels: None,
            pixels: (0..n * 16).map(|i| (i % 251) as u8).collect(),
            channels: 1,
            height: 4,
            width: 4,
        }
    }

    #[test]
    fn normalises_with_mean_and_std() {
        let n = Normalize { mean: vec![0.5], std: vec![0.25] };
        let mut out = [0f32; 2];
        n.apply(&[0, 255], 1, &mut out);
        assert!((out[0] + 2.0).abs() < 1e-6 && (out[1] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn batches_come_in_order_and_do_not_depend_on_worker_count() {
        let s: Arc<dyn Samples> = Arc::new(set(50));
        let batches: Vec<Vec<usize>> = (0..10).map(|b| (b * 5..b * 5 + 5).rev().collect()).collect();
        let norm = Normalize { mean: vec![0.0], std: vec![1.0] };
        let run = |workers| {
            let cfg = LoaderConfig { workers, prefetch: 2, augment: "randaugment:2:10".parse().unwrap(), seed: 7 };
            Loader::start(s.clone(), batches.clone(), norm.clone(), &cfg).collect::<Vec<_>>()
        };
        let one = run(1);
        let four = run(4);
        assert_eq!(one.len(), 10);
        for (a, b) in one.iter().zip(&four) {
            assert_eq!(a.rows, b.rows);
            assert_eq!(a.pixels, b.pixels);
            assert_eq!(a.shape, [5, 1, 4, 4]);
        }
        assert_eq!(one[3].rows, vec![19, 18, 17, 16, 15]);
    }
}
