//! In-memory image sets: `u8` pixels in channel-planar (CHW) order, stable ids
//! and optional labels.

use crate::error::DataError;
use crate::idx::read_idx;
use crate::spec::{DataSpec, Format};

/// A set of equally sized images held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Stable id per image, derived from where it is stored, never from the
    /// order of a selection (IDX: `<split>-<index in file, 6 digits>`).
    pub ids: Vec<String>,
    /// Class index per image, if known.
    pub labels: Option<Vec<i64>>,
    /// `len * channels * height * width` bytes, image after image, CHW.
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// Loads a split of a data set described by `spec`. Images that cannot
    /// be used are left out with a warning; use
    /// [`ImageSet::load_split_filtered`] to get their records.
    pub fn load_split(spec: &DataSpec, split: &str) -> Result<Self, DataError> {
        let (set, skipped) = Self::load_split_filtered(spec, split, &|_| true)?;
        if let Some(first) = skipped.first() {
            tracing::warn!(
                "{} image(s) of split {split:?} skipped; first: {} at {}: {}",
                skipped.len(),
                first.id,
                first.location,
                first.reason
            );
        }
        Ok(set)
    }

    /// Loads the images of a split whose id `keep` accepts (decided before
    /// any pixel is read, for corpus formats), with a record of each image
    /// that was skipped.
    pub fn load_split_filtered(
        spec: &DataSpec,
        split: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Self, Vec<crate::corpus::Skipped>), DataError> {
        let files = spec.split(split)?;
        if spec.format != Format::Idx {
            return crate::corpus::load(spec, split, files, keep);
        }
        let set = Self::load_idx(spec, split, files)?;
        let rows: Vec<usize> = (0..set.len()).filter(|&r| keep(&set.ids[r])).collect();
        Ok((if rows.len() == set.len() { set } else { set.select(&rows) }, Vec::new()))
    }

    fn load_idx(spec: &DataSpec, split: &str, files: &crate::spec::SplitFiles) -> Result<Self, DataError> {
        match spec.format {
            Format::Idx => {
                let image_path = spec.file(&files.images)?;
                let images = read_idx(&image_path)?;
                let want = [spec.height, spec.width];
                if images.dims.len() != 3 || images.dims[1..] != want {
                    return Err(DataError::Idx {
                        path: image_path,
                        message: format!(
                            "expected dimensions [N, {}, {}] as the spec says, found {:?}",
                            spec.height, spec.width, images.dims
                        ),
                    });
                }
                let n = images.dims[0];
                let labels = match &files.labels {
                    None => None,
                    Some(label_file) => {
                        let label_path = spec.file(label_file)?;
                        let labels = read_idx(&label_path)?;
                        if labels.dims != [n] {
                            return Err(DataError::Idx {
                                path: label_path,
                                message: format!(
                                    "expected {n} labels (one per image in {}), found dimensions {:?}",
                                    image_path.display(),
                                    labels.dims
                                ),
                            });
                        }
                        if let Some((i, bad)) =
                            labels.data.iter().enumerate().find(|(_, l)| **l as usize >= spec.num_classes())
                        {
                            return Err(DataError::Idx {
                                path: label_path,
                                message: format!(
                                    "label {bad} at index {i} is outside the spec's {} classes",
                                    spec.num_classes()
                                ),
                            });
                        }
                        Some(labels.data.iter().map(|l| *l as i64).collect())
                    }
                };
                Ok(ImageSet {
                    ids: (0..n).map(|i| format!("{split}-{i:06}")).collect(),
                    labels,
                    pixels: images.data,
                    channels: 1,
                    height: spec.height,
                    width: spec.width,
                })
            }
            _ => unreachable!("corpus formats are read by corpus::load"),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes per image.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i`, CHW.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// A new set of the given rows, in that order (rows may repeat).
    pub fn select(&self, rows: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(rows.len() * self.image_size());
        for &r in rows {
            pixels.extend_from_slice(self.image(r));
        }
        ImageSet {
            ids: rows.iter().map(|&r| self.ids[r].clone()).collect(),
            labels: self.labels.as_ref().map(|l| rows.iter().map(|&r| l[r]).collect()),
            pixels,
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The same images with the labels removed (what the label stage sees).
    pub fn without_labels(mut self) -> ImageSet {
        self.labels = None;
        self
    }

    /// Labels, or an error saying which use needed them.
    pub fn require_labels(&self, purpose: &str) -> Result<&[i64], DataError> {
        self.labels
            .as_deref()
            .ok_or_else(|| DataError::Invalid(format!("{purpose} needs labelled images, but this set has no labels")))
    }
}
