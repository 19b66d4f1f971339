//! Random access to images for the loader.
//!
//! Two kinds of source stand behind one trait: image sets already decoded
//! into memory ([`ImageSet`], the IDX data sets), and encoded corpora
//! ([`EncodedCorpus`]: JPEG/PNG files, tar members, Parquet bytes) that the
//! loader's worker threads decode, crop and resize on demand, so a corpus
//! never has to fit in memory as pixels.
//!
//! Cropping follows the usual ImageNet recipe: evaluation resizes the short
//! side to `size / crop_fraction` and takes the centre `size`; training takes
//! a random resized crop (area 8%..100%, aspect 3/4..4/3) and resizes it to
//! `size`, bicubic (Catmull-Rom) in both cases.

use std::path::PathBuf;
use std::sync::Arc;

use fast_image_resize as fir;
use fast_image_resize::PixelType;
use image::DynamicImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::images::ImageSet;

/// How a decoded image of any size becomes the output size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// Resize the short side to `size / fraction`, crop the centre.
    Centre { fraction: f32 },
    /// Random area `min_scale..1` of the image, aspect ratio 3/4..4/3,
    /// resized to the output size.
    RandomResized { min_scale: f32 },
}

/// Images addressed by row, producing `u8` CHW pixels of one shape.
pub trait Samples: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Stable id of a row.
    fn id(&self, row: usize) -> &str;
    /// Where the row's image is stored (for records of skipped images).
    fn location(&self, row: usize) -> String {
        self.id(row).to_string()
    }
    /// `[channels, height, width]` of every image this source produces.
    fn shape(&self) -> [usize; 3];
    /// Writes row `row`'s pixels into `out` (`channels * height * width`
    /// bytes). An image that cannot be used is an `Err` with the reason.
    fn fill(&self, row: usize, rng: &mut ChaCha8Rng, out: &mut [u8]) -> Result<(), String>;
    /// Whether `fill` already made a random training crop (the loader then
    /// skips the pad-and-crop meant for small, pre-sized images).
    fn random_crops(&self) -> bool {
        false
    }
}

impl Samples for ImageSet {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn id(&self, row: usize) -> &str {
        &self.ids[row]
    }
    fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    fn fill(&self, row: usize, _rng: &mut ChaCha8Rng, out: &mut [u8]) -> Result<(), String> {
        out.copy_from_slice(self.image(row));
        Ok(())
    }
}

/// Where an encoded image's bytes are.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// `size` bytes at `offset` of an uncompressed tar file.
    Range {
        file: Arc<PathBuf>,
        offset: u64,
        size: u64,
    },
    Bytes(Arc<Vec<u8>>),
}

impl Source {
    fn read(&self) -> Result<std::borrow::Cow<'_, [u8]>, String> {
        use std::io::{Read, Seek, SeekFrom};
        match self {
            Source::File(path) => std::fs::read(path).map(Into::into).map_err(|e| format!("cannot read: {e}")),
            Source::Range { file, offset, size } => {
                let mut f = std::fs::File::open(file.as_ref()).map_err(|e| format!("cannot open: {e}"))?;
                f.seek(SeekFrom::Start(*offset)).map_err(|e| format!("cannot seek: {e}"))?;
                let mut bytes = Vec::with_capacity(*size as usize);
                f.take(*size).read_to_end(&mut bytes).map_err(|e| format!("cannot read member: {e}"))?;
                if (bytes.len() as u64) < *size {
                    return Err(format!(
                        "tar member truncated: header says {size} bytes, the file holds {}",
                        bytes.len()
                    ));
                }
                Ok(bytes.into())
            }
            Source::Bytes(b) => Ok(b.as_slice().into()),
        }
    }
}

/// A listed corpus: ids, labels and where each image's bytes are, decoded
/// only when a row is asked for.
#[derive(Debug, Clone)]
pub struct EncodedCorpus {
    pub ids: Vec<String>,
    pub locations: Vec<String>,
    pub labels: Option<Vec<i64>>,
    pub sources: Vec<Source>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub crop: Crop,
}

impl EncodedCorpus {
    /// A new corpus of the given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> EncodedCorpus {
        EncodedCorpus {
            ids: rows.iter().map(|&r| self.ids[r].clone()).collect(),
            locations: rows.iter().map(|&r| self.locations[r].clone()).collect(),
            labels: self.labels.as_ref().map(|l| rows.iter().map(|&r| l[r]).collect()),
            sources: rows.iter().map(|&r| self.sources[r].clone()).collect(),
            ..self.clone_empty()
        }
    }

    fn clone_empty(&self) -> EncodedCorpus {
        EncodedCorpus {
            ids: Vec::new(),
            locations: Vec::new(),
            labels: None,
            sources: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            crop: self.crop,
        }
    }

    /// The same listing producing images of another size or crop.
    pub fn with_output(mut self, height: usize, width: usize, crop: Crop) -> EncodedCorpus {
        (self.height, self.width, self.crop) = (height, width, crop);
        self
    }

    /// Decodes every row into memory (on all cores), returning the images
    /// that could be used and a record of each that could not.
    pub fn decode_all(&self) -> (ImageSet, Vec<crate::corpus::Skipped>) {
        let size = self.channels * self.height * self.width;
        let n = self.ids.len();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.max(1));
        let chunk = n.div_ceil(threads).max(1);
        let rows: Vec<usize> = (0..n).collect();
        let decoded: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = rows
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
                        part.iter()
                            .map(|&r| {
                                let mut out = vec![0u8; size];
                                self.fill(r, &mut rng, &mut out).map(|_| out)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("decode thread panicked")).collect()
        });
        let mut set = ImageSet {
            ids: Vec::new(),
            labels: self.labels.as_ref().map(|_| Vec::new()),
            pixels: Vec::with_capacity(n * size),
            channels: self.channels,
            height: self.height,
            width: self.width,
        };
        let mut skipped = Vec::new();
        for (r, d) in decoded.into_iter().enumerate() {
            match d {
                Ok(pixels) => {
                    set.ids.push(self.ids[r].clone());
                    if let (Some(out), Some(labels)) = (&mut set.labels, &self.labels) {
                        out.push(labels[r]);
                    }
                    set.pixels.extend(pixels);
                }
                Err(reason) => skipped.push(crate::corpus::Skipped {
                    id: self.ids[r].clone(),
                    location: self.locations[r].clone(),
                    reason,
                }),
            }
        }
        (set, skipped)
    }
}

impl Samples for EncodedCorpus {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn id(&self, row: usize) -> &str {
        &self.ids[row]
    }
    fn location(&self, row: usize) -> String {
        self.locations[row].clone()
    }
    fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
    fn fill(&self, row: usize, rng: &mut ChaCha8Rng, out: &mut [u8]) -> Result<(), String> {
        let bytes = self.sources[row].read()?;
        let img = decode(&bytes)?;
        let pixels = crop_to(img, self.channels, self.height, self.width, self.crop, rng);
        out.copy_from_slice(&pixels);
        Ok(())
    }
    fn random_crops(&self) -> bool {
        matches!(self.crop, Crop::RandomResized { .. })
    }
}

/// A split as the loader reads it: decoded in memory (IDX) or listed, to be
/// decoded on demand (corpus formats).
#[derive(Debug, Clone)]
pub enum Split {
    Memory(ImageSet),
    Encoded(EncodedCorpus),
}

impl Split {
    /// Opens a split of `spec`, keeping the images whose id `keep` accepts
    /// (decided from listings, before any pixel is read), with records of
    /// the samples already known to be unusable.
    pub fn open(
        spec: &crate::DataSpec,
        split: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Split, Vec<crate::corpus::Skipped>), crate::DataError> {
        let files = spec.split(split)?;
        if spec.format == crate::spec::Format::Idx {
            let (set, skipped) = ImageSet::load_split_filtered(spec, split, keep)?;
            return Ok((Split::Memory(set), skipped));
        }
        let (corpus, skipped) = crate::corpus::list(spec, split, files, keep)?;
        Ok((Split::Encoded(corpus), skipped))
    }

    pub fn ids(&self) -> &[String] {
        match self {
            Split::Memory(s) => &s.ids,
            Split::Encoded(c) => &c.ids,
        }
    }

    pub fn labels(&self) -> Option<&[i64]> {
        match self {
            Split::Memory(s) => s.labels.as_deref(),
            Split::Encoded(c) => c.labels.as_deref(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    /// The given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> Split {
        match self {
            Split::Memory(s) => Split::Memory(s.select(rows)),
            Split::Encoded(c) => Split::Encoded(c.select(rows)),
        }
    }

    pub fn without_labels(self) -> Split {
        match self {
            Split::Memory(s) => Split::Memory(s.without_labels()),
            Split::Encoded(mut c) => {
                c.labels = None;
                Split::Encoded(c)
            }
        }
    }

    /// Encoded images come out at `height` x `width` (a model's input size
    /// may differ from the spec's); in-memory sets keep their size.
    pub fn resized(self, height: usize, width: usize) -> Split {
        match self {
            Split::Encoded(c) => {
                let crop = c.crop;
                Split::Encoded(c.with_output(height, width, crop))
            }
            memory => memory,
        }
    }

    /// The split as the loader's row source. `train` picks the training
    /// crop the spec asks for (random resized crops of encoded images); the
    /// centre crop otherwise.
    pub fn into_samples(self, spec: &crate::DataSpec, train: bool) -> Arc<dyn Samples> {
        match self {
            Split::Memory(s) => Arc::new(s),
            Split::Encoded(c) => {
                let crop = if train && spec.train_crop == crate::spec::TrainCrop::RandomResized {
                    Crop::RandomResized { min_scale: 0.08 }
                } else {
                    Crop::Centre { fraction: spec.crop_fraction }
                };
                let (h, w) = (c.height, c.width);
                Arc::new(c.with_output(h, w, crop))
            }
        }
    }
}

/// Rows drawn from several sources, one after the other (the student's
/// labelled rows, then its pseudo-labelled rows).
pub struct Concat {
    parts: Vec<Arc<dyn Samples>>,
    starts: Vec<usize>,
    len: usize,
}

impl Concat {
    /// All parts must produce the same shape.
    pub fn new(parts: Vec<Arc<dyn Samples>>) -> Result<Concat, String> {
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for p in &parts {
            if p.shape() != parts[0].shape() {
                return Err(format!("image shapes differ: {:?} and {:?}", parts[0].shape(), p.shape()));
            }
            starts.push(len);
            len += p.len();
        }
        Ok(Concat { parts, starts, len })
    }

    fn locate(&self, row: usize) -> (&dyn Samples, usize) {
        let part = self.starts.partition_point(|&s| s <= row) - 1;
        (self.parts[part].as_ref(), row - self.starts[part])
    }
}

impl Samples for Concat {
    fn len(&self) -> usize {
        self.len
    }
    fn id(&self, row: usize) -> &str {
        let (p, r) = self.locate(row);
        p.id(r)
    }
    fn location(&self, row: usize) -> String {
        let (p, r) = self.locate(row);
        p.location(r)
    }
    fn shape(&self) -> [usize; 3] {
        self.parts.first().map_or([0; 3], |p| p.shape())
    }
    fn fill(&self, row: usize, rng: &mut ChaCha8Rng, out: &mut [u8]) -> Result<(), String> {
        let (p, r) = self.locate(row);
        p.fill(r, rng, out)
    }
    fn random_crops(&self) -> bool {
        self.parts.iter().all(|p| p.random_crops())
    }
}

/// Decodes JPEG or PNG bytes, whatever their colour type and bit depth.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("empty (zero-byte) file".into());
    }
    let format =
        image::guess_format(bytes).map_err(|_| "not a recognised image format (expected JPEG or PNG)".to_string())?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png) {
        return Err(format!("unsupported image format {format:?} (expected JPEG or PNG)"));
    }
    if format == image::ImageFormat::Jpeg {
        jpeg_complete(bytes)?;
    }
    image::load_from_memory_with_format(bytes, format).map_err(|e| format!("cannot decode {format:?}: {e}"))
}

/// The JPEG decoder fills a file cut short with grey and reports success; a
/// complete JPEG has an end-of-image marker (FF D9) after its last
/// start-of-scan (FF DA). Inside scan data an FF byte is always followed by
/// 00 or a restart marker, so neither pair can appear there by accident.
fn jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let Some(scan) = last_scan else {
        return Err("cannot decode Jpeg: no image data (start-of-scan marker missing)".into());
    };
    if !bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(format!(
            "cannot decode Jpeg: truncated (no end-of-image marker after the image data; the file is {} bytes)",
            bytes.len()
        ));
    }
    Ok(())
}

/// The crop window `(x, y, width, height)` in a `w` x `h` image.
fn window(w: u32, h: u32, out_w: usize, out_h: usize, crop: Crop, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
    let (wf, hf) = (w as f64, h as f64);
    match crop {
        Crop::Centre { fraction } => {
            // Scale so the output covers the image's short side, enlarged
            // by 1 / fraction; the window is the output mapped back.
            let scale = (out_w as f64 / wf).max(out_h as f64 / hf) / f64::from(fraction.clamp(0.05, 1.0));
            let cw = ((out_w as f64 / scale).round() as u32).clamp(1, w);
            let ch = ((out_h as f64 / scale).round() as u32).clamp(1, h);
            ((w - cw) / 2, (h - ch) / 2, cw, ch)
        }
        Crop::RandomResized { min_scale } => {
            let area = wf * hf;
            let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
            for _ in 0..10 {
                let target = area * rng.random_range(f64::from(min_scale.clamp(0.01, 1.0))..=1.0);
                let ratio = rng.random_range(lo..=hi).exp();
                let cw = (target * ratio).sqrt().round();
                let ch = (target / ratio).sqrt().round();
                if cw >= 1.0 && ch >= 1.0 && cw <= wf && ch <= hf {
                    let (cw, ch) = (cw as u32, ch as u32);
                    return (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch), cw, ch);
                }
            }
            // Fall back to the largest centred window of a legal ratio.
            let ratio = wf / hf;
            let (cw, ch) = if ratio < 0.75 {
                (w, (wf / 0.75).round().min(hf) as u32)
            } else if ratio > 4.0 / 3.0 {
                ((hf * 4.0 / 3.0).round().min(wf) as u32, h)
            } else {
                (w, h)
            };
            ((w - cw) / 2, (h - ch) / 2, cw.max(1), ch.max(1))
        }
    }
}

/// Crops and resizes a decoded image to `channels` x `height` x `width`, CHW.
pub fn crop_to(
    img: DynamicImage,
    channels: usize,
    height: usize,
    width: usize,
    crop: Crop,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    // Convert first: 16-bit, RGBA and CMYK-derived images all become 8-bit
    // grey or RGB before any resampling (no copy when already so). A grey
    // image stays one plane even when RGB is asked for: its RGB form is the
    // plane three times and resampling is per channel, so copying the plane
    // at the end gives the same pixels for a third of the work.
    let (iw, ih) = (img.width(), img.height());
    let grey = channels == 1 || !img.color().has_color();
    let (pixel, raw, bytes_per_pixel) = if grey {
        (PixelType::U8, img.into_luma8().into_raw(), 1)
    } else {
        (PixelType::U8x3, img.into_rgb8().into_raw(), 3)
    };
    let (x, y, cw, ch) = window(iw, ih, width, height, crop, rng);
    let (ow, oh) = (width as u32, height as u32);
    let interleaved = if (x, y, cw, ch, iw, ih) == (0, 0, ow, oh, ow, oh) {
        raw
    } else if (cw, ch) == (ow, oh) {
        // A window of the output size: cut it out, nothing to resample.
        let (row, start, line) = (iw as usize * bytes_per_pixel, x as usize * bytes_per_pixel, width * bytes_per_pixel);
        let mut cut = Vec::with_capacity(line * height);
        for r in y as usize..(y + ch) as usize {
            cut.extend_from_slice(&raw[r * row + start..r * row + start + line]);
        }
        cut
    } else {
        // SIMD convolution resize; the kernel widens when shrinking, so a
        // downscale is antialiased as in PIL.
        let src = fir::images::Image::from_vec_u8(iw, ih, raw, pixel).expect("buffer matches its size");
        let mut dst = fir::images::Image::new(ow, oh, pixel);
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
            .crop(f64::from(x), f64::from(y), f64::from(cw), f64::from(ch));
        RESIZER
            .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
            .expect("same pixel type, crop inside the image");
        dst.into_vec()
    };
    match (channels, bytes_per_pixel) {
        (1, _) => interleaved,
        (_, 1) => interleaved.repeat(channels),
        _ => {
            let plane = height * width;
            let mut chw = vec![0u8; 3 * plane];
            let (r, rest) = chw.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (((px, r), g), b) in interleaved.chunks_exact(3).zip(r).zip(g).zip(b) {
                (*r, *g, *b) = (px[0], px[1], px[2]);
            }
            chw
        }
    }
}

thread_local! {
    /// One resizer per worker thread: it keeps its scratch buffers.
    static RESIZER: std::cell::RefCell<fir::Resizer> = std::cell::RefCell::new(fir::Resizer::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rgb(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7])))
    }

    #[test]
    fn centre_crop_takes_the_middle_of_the_long_side() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // 40 wide, 20 high, to 10x10: window 20x20 starting at x=10.
        assert_eq!(window(40, 20, 10, 10, Crop::Centre { fraction: 1.0 }, &mut rng), (10, 0, 20, 20));
        // crop fraction 0.5 halves the window.
        assert_eq!(window(40, 20, 10, 10, Crop::Centre { fraction: 0.5 }, &mut rng), (15, 5, 10, 10));
        let out = crop_to(rgb(40, 20), 3, 10, 10, Crop::Centre { fraction: 1.0 }, &mut rng);
        assert_eq!(out.len(), 300);
        // Red channel holds x: the centre column maps near x = 20.
        let mid = out[5 * 10 + 5] as i32;
        assert!((mid - 20).abs() <= 2, "centre pixel x {mid}");
    }

    #[test]
    fn a_window_of_the_output_size_is_cut_out_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // 6x4 to 4x4 at fraction 1: the window is columns 1..5, no resampling.
        let out = crop_to(rgb(6, 4), 3, 4, 4, Crop::Centre { fraction: 1.0 }, &mut rng);
        let red: Vec<u8> = (0..4).flat_map(|_| 1..5).collect();
        let green: Vec<u8> = (0..4).flat_map(|y| [y; 4]).collect();
        assert_eq!(&out[..16], red.as_slice(), "red holds x");
        assert_eq!(&out[16..32], green.as_slice(), "green holds y");
        assert!(out[32..].iter().all(|&b| b == 7));
        // A grey image asked for as RGB: the same pixels as converting it to
        // RGB first, on the cut-out path and on the resampling path.
        let g = DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 7, |x, y| image::Luma([(x * 30 + y * 7) as u8])));
        for (h, w) in [(7, 7), (4, 5)] {
            let direct = crop_to(g.clone(), 3, h, w, Crop::Centre { fraction: 1.0 }, &mut rng);
            let via_rgb =
                crop_to(DynamicImage::ImageRgb8(g.to_rgb8()), 3, h, w, Crop::Centre { fraction: 1.0 }, &mut rng);
            assert_eq!(direct, via_rgb, "{h}x{w}");
        }
        let grey = crop_to(
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(4, 6, |_, y| image::Luma([y as u8]))),
            1,
            4,
            4,
            Crop::Centre { fraction: 1.0 },
            &mut rng,
        );
        assert_eq!(grey, (1..5).flat_map(|y| [y; 4]).collect::<Vec<u8>>());
    }

    #[test]
    fn random_resized_crops_stay_inside_and_vary_with_the_seed() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let (x, y, w, h) = window(64, 48, 16, 16, Crop::RandomResized { min_scale: 0.08 }, &mut rng);
            assert!(x + w <= 64 && y + h <= 48 && w >= 1 && h >= 1);
            let ratio = f64::from(w) / f64::from(h);
            let area = f64::from(w * h) / (64.0 * 48.0);
            assert!((0.7..=1.45).contains(&ratio) || (w, h) == (64, 48), "ratio {ratio}");
            assert!(area >= 0.07, "area {area}");
            seen.insert((x, y, w, h));
        }
        assert!(seen.len() > 40);
        let again = window(64, 48, 16, 16, Crop::RandomResized { min_scale: 0.08 }, &mut ChaCha8Rng::seed_from_u64(3));
        let first = window(64, 48, 16, 16, Crop::RandomResized { min_scale: 0.08 }, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(again, first);
    }

    #[test]
    fn every_colour_type_comes_out_with_the_requested_channels() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grey16 =
            DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(8, 8, |x, _| image::Luma([(x * 8000) as u16])));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(8, 8, |_, _| image::Rgba([200, 10, 10, 0])));
        for img in [grey16, rgba, rgb(8, 8)] {
            for c in [1, 3] {
                let out = crop_to(img.clone(), c, 8, 8, Crop::Centre { fraction: 1.0 }, &mut rng);
                assert_eq!(out.len(), c * 64);
            }
        }
        // 16-bit grey is scaled to 8 bits, not truncated.
        let g = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(2, 1, |x, _| {
            image::Luma([[0u16, 65535][x as usize]])
        }));
        assert_eq!(crop_to(g, 1, 1, 2, Crop::Centre { fraction: 1.0 }, &mut rng), vec![0, 255]);
    }

    #[test]
    fn a_cmyk_jpeg_decodes_to_the_colours_pillow_gives() {
        // tests/fixtures/images/README.md says how it was made and what
        // Pillow's RGB conversion of it is.
        let bytes = include_bytes!("../../../tests/fixtures/images/cmyk.jpg");
        let img = decode(bytes).unwrap();
        let out = crop_to(img, 3, 16, 24, Crop::Centre { fraction: 1.0 }, &mut ChaCha8Rng::seed_from_u64(0));
        let at = |x: usize, y: usize| [out[y * 24 + x], out[384 + y * 24 + x], out[768 + y * 24 + x]];
        for ((x, y), want) in [((2, 2), [235, 225, 215]), ((20, 10), [29, 56, 114])] {
            let got = at(x, y);
            let off = got.iter().zip(want).map(|(&g, w)| (i32::from(g) - w).abs()).max().unwrap();
            assert!(off <= 12, "pixel ({x}, {y}): {got:?}, Pillow {want:?}");
        }
    }

    #[test]
    fn bad_bytes_are_errors_with_a_reason() {
        assert!(decode(&[]).unwrap_err().contains("zero-byte"));
        assert!(decode(b"hello, not an image").unwrap_err().contains("not a recognised"));
        assert!(decode(b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").unwrap_err().contains("unsupported"));
        let mut png = Vec::new();
        rgb(16, 16).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(decode(&png[..png.len() / 2]).unwrap_err().contains("cannot decode"));
        let mut jpeg = Vec::new();
        rgb(32, 32).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        assert!(decode(&jpeg).is_ok());
        // Cut inside the scan data: the decoder alone would accept it.
        assert!(decode(&jpeg[..jpeg.len() - 40]).unwrap_err().contains("truncated"));
        // Cut inside the headers.
        assert!(decode(&jpeg[..100]).unwrap_err().contains("cannot decode"));
    }

    #[test]
    fn concat_addresses_rows_across_parts() {
        let set = |tag: &str, n: usize| ImageSet {
            ids: (0..n).map(|i| format!("{tag}{i}")).collect(),
            labels: None,
            pixels: (0..n).map(|i| i as u8).collect(),
            channels: 1,
            height: 1,
            width: 1,
        };
        let c = Concat::new(vec![Arc::new(set("a", 2)), Arc::new(set("b", 3))]).unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!((c.id(1), c.id(2), c.id(4)), ("a1", "b0", "b2"));
        let mut out = [0u8];
        c.fill(4, &mut ChaCha8Rng::seed_from_u64(0), &mut out).unwrap();
        assert_eq!(out, [2]);
    }
}
