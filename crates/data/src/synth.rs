//! Building image corpora from an in-memory image set (for scale tests and
//! throughput work: real images, re-encoded at any size and count), and
//! preview grids of images as a trainer sees them.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::atomic::{AtomicFile, write_atomic};
use crate::augment::{Augment, ImageMut};
use crate::error::DataError;
use crate::images::ImageSet;
use crate::samples::Samples;

/// How a synthesised corpus is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `out/<class name>/<id>.<ext>` (a labelled folder corpus).
    ClassFolders,
    /// `out/<id>.<ext>` (an unlabelled folder corpus).
    Flat,
    /// `out/synth-XXXXXX.tar`, WebDataset members `<id>.<ext>` and, when
    /// labelled, `<id>.cls`.
    Tar { per_shard: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Jpeg { quality: u8 },
    Png,
}

impl Encoding {
    pub fn extension(&self) -> &'static str {
        match self {
            Encoding::Jpeg { .. } => "jpg",
            Encoding::Png => "png",
        }
    }
}

/// What `synthesise` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    /// Images to write (the source images repeat as needed).
    pub count: usize,
    /// Side of the written images in pixels.
    pub size: u32,
    pub encoding: Encoding,
    pub layout: Layout,
    /// Grey sources become colour images: each written image is painted
    /// with two colours drawn from its position in the output (ink for
    /// bright pixels, background for dark), so decoders and loaders work on
    /// real 3-channel JPEGs.
    pub colour: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub images: usize,
    pub files: usize,
    pub bytes: u64,
}

fn to_dynamic(pixels: &[u8], channels: usize, height: usize, width: usize) -> DynamicImage {
    let (w, h) = (width as u32, height as u32);
    if channels == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, pixels.to_vec()).expect("size matches"))
    } else {
        let plane = height * width;
        let hwc: Vec<u8> = (0..plane).flat_map(|i| [pixels[i], pixels[plane + i], pixels[2 * plane + i]]).collect();
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, hwc).expect("size matches"))
    }
}

/// Encodes a CHW image at `size` x `size` pixels (bicubic).
pub fn encode(
    pixels: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    size: u32,
    encoding: Encoding,
) -> Result<Vec<u8>, DataError> {
    let img = to_dynamic(pixels, channels, height, width);
    let img = if (img.width(), img.height()) == (size, size) {
        img
    } else {
        img.resize_exact(size, size, FilterType::CatmullRom)
    };
    let mut out = Cursor::new(Vec::new());
    match encoding {
        Encoding::Png => img.write_to(&mut out, ImageFormat::Png),
        Encoding::Jpeg { quality } => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            img.write_with_encoder(encoder)
        }
    }
    .map_err(|e| DataError::Invalid(format!("cannot encode image: {e}")))?;
    Ok(out.into_inner())
}

/// A grey CHW image as a 3-channel one, painted with two colours chosen by
/// `seed`: `background + (ink - background) * value / 255` per channel.
fn paint(grey: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ink: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    let background: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    (0..3)
        .flat_map(|c| {
            grey.iter().map(move |&v| (background[c] + (ink[c] - background[c]) * f32::from(v) / 255.0 + 0.5) as u8)
        })
        .collect()
}

/// Writes `options.count` images drawn cyclically from `set` (a repeat gets
/// a `-rN` suffix on its id) under `out`.
pub fn synthesise(
    set: &ImageSet,
    class_names: &[String],
    options: &SynthOptions,
    out: &Path,
) -> Result<SynthReport, DataError> {
    let SynthOptions { count, size, encoding, layout, colour } = *options;
    if set.is_empty() {
        return Err(DataError::Invalid("no source images to synthesise from".into()));
    }
    if layout == Layout::ClassFolders && set.labels.is_none() {
        return Err(DataError::Invalid("class folders need labelled source images".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let ext = encoding.extension();
    let mut report = SynthReport { images: 0, files: 0, bytes: 0 };
    let mut tar: Option<(tar::Builder<std::fs::File>, AtomicFile)> = None;
    let finish_tar = |t: Option<(tar::Builder<std::fs::File>, AtomicFile)>| -> Result<(), DataError> {
        if let Some((builder, file)) = t {
            builder.into_inner().map_err(|e| DataError::io(file.temporary_path(), e))?;
            file.commit()?;
        }
        Ok(())
    };
    for i in 0..count {
        let row = i % set.len();
        let repeat = i / set.len();
        let base = set.ids[row].replace('/', "_");
        let id = if repeat == 0 { base } else { format!("{base}-r{repeat}") };
        let (pixels, channels) = if colour && set.channels == 1 {
            (std::borrow::Cow::Owned(paint(set.image(row), i as u64)), 3)
        } else {
            (std::borrow::Cow::Borrowed(set.image(row)), set.channels)
        };
        let bytes = encode(&pixels, channels, set.height, set.width, size, encoding)?;
        let label = set.labels.as_ref().map(|l| l[row]);
        match layout {
            Layout::ClassFolders | Layout::Flat => {
                let dir = match (layout, label) {
                    (Layout::ClassFolders, Some(l)) => out.join(crate::corpus::folder_name(&class_names[l as usize])),
                    _ => out.to_path_buf(),
                };
                let path: PathBuf = dir.join(format!("{id}.{ext}"));
                write_atomic(&path, &bytes)?;
                report.files += 1;
            }
            Layout::Tar { per_shard } => {
                if i % per_shard.max(1) == 0 {
                    finish_tar(tar.take())?;
                    let path = out.join(format!("synth-{:06}.tar", i / per_shard.max(1)));
                    let file = AtomicFile::create(&path)?;
                    tar = Some((tar::Builder::new(file.try_clone()?), file));
                    report.files += 1;
                }
                let (builder, file) = tar.as_mut().expect("opened above");
                let mut append = |name: String, data: &[u8]| -> Result<(), DataError> {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, name, data).map_err(|e| DataError::io(file.temporary_path(), e))
                };
                append(format!("{id}.{ext}"), &bytes)?;
                if let Some(l) = label {
                    append(format!("{id}.cls"), l.to_string().as_bytes())?;
                }
            }
        }
        report.images += 1;
        report.bytes += bytes.len() as u64;
    }
    finish_tar(tar)?;
    Ok(report)
}

/// A PNG grid of the first `count` images of `set` after `augment` (seeded
/// as the trainer seeds a batch), each tile scaled up to at least 64 px.
pub fn preview_grid(
    set: &dyn Samples,
    count: usize,
    augment: Augment,
    seed: u64,
    out: &Path,
) -> Result<(usize, u32, u32), DataError> {
    let n = count.min(set.len());
    if n == 0 {
        return Err(DataError::Invalid("no images to preview".into()));
    }
    let [channels, height, width] = set.shape();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let scale = (64 / height.max(width)).max(1);
    let (tile_h, tile_w) = (height * scale, width * scale);
    let gap = 2;
    let (w, h) = ((cols * (tile_w + gap) + gap) as u32, (rows * (tile_h + gap) + gap) as u32);
    let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scratch = vec![0u8; channels * height * width];
    let plane = height * width;
    let mut shown = 0;
    for row in 0..set.len() {
        if shown == n {
            break;
        }
        // The same steps as the loader: decode and crop, then augment.
        if set.fill(row, &mut rng, &mut scratch).is_err() {
            continue;
        }
        augment.apply_with(
            &mut ImageMut { pixels: &mut scratch, channels, height, width },
            &mut rng,
            !set.random_crops(),
        );
        let k = shown;
        shown += 1;
        let (x0, y0) = ((k % cols) * (tile_w + gap) + gap, (k / cols) * (tile_h + gap) + gap);
        for y in 0..tile_h {
            for x in 0..tile_w {
                let i = (y / scale) * width + x / scale;
                let px = if channels == 1 {
                    [scratch[i]; 3]
                } else {
                    [scratch[i], scratch[plane + i], scratch[2 * plane + i]]
                };
                canvas.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    let mut bytes = Cursor::new(Vec::new());
    canvas.write_to(&mut bytes, ImageFormat::Png).map_err(|e| DataError::Invalid(format!("cannot encode PNG: {e}")))?;
    let mut f = AtomicFile::create(out)?;
    let tmp = f.temporary_path().to_path_buf();
    f.file().write_all(bytes.get_ref()).map_err(|e| DataError::io(tmp, e))?;
    f.commit()?;
    Ok((n, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey_set() -> ImageSet {
        ImageSet {
            ids: vec!["a".into(), "b".into()],
            labels: None,
            pixels: (0..2 * 16).map(|i| (i * 8) as u8).collect(),
            channels: 1,
            height: 4,
            width: 4,
        }
    }

    #[test]
    fn colour_synthesis_paints_grey_images_in_two_colours() {
        let dir = tempfile::tempdir().unwrap();
        for colour in [false, true] {
            let out = dir.path().join(format!("c{colour}"));
            let options = SynthOptions { count: 3, size: 4, encoding: Encoding::Png, layout: Layout::Flat, colour };
            let report = synthesise(&grey_set(), &[], &options, &out).unwrap();
            assert_eq!((report.images, report.files), (3, 3));
            let img = image::open(out.join("a.png")).unwrap();
            assert_eq!(img.color().has_color(), colour);
            if colour {
                let rgb = img.to_rgb8();
                // Lossless PNG: each channel is an affine map of the grey value,
                // and the repeat of "a" (drawn with another seed) differs.
                assert!(rgb.pixels().any(|p| p[0] != p[1] || p[1] != p[2]));
                assert_ne!(rgb.into_raw(), image::open(out.join("a-r1.png")).unwrap().to_rgb8().into_raw());
            }
        }
    }
}
