//! Training-time noise: pad-and-crop, horizontal flip and RandAugment.
//!
//! RandAugment (Cubuk et al. 2020) as ResNet-RS and Noisy Student use it:
//! `layers` operations per image, each drawn uniformly from the standard set
//! of 14, at a shared magnitude `M` on a 0..10 scale (larger M is allowed and
//! means stronger). As in the TensorFlow code the paper used, each chosen op
//! is applied with a probability drawn once per image from U(0.2, 0.8),
//! geometric ops fill uncovered pixels with grey (128) and their direction is
//! random. All ops work on `u8` CHW images of 1 or 3 channels.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Largest magnitude of the 0..10 scale; `magnitude / MAX_LEVEL` is the
/// fraction of each op's maximum strength.
pub const MAX_LEVEL: f32 = 10.0;
const FILL: u8 = 128;

/// The standard RandAugment operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Identity,
    AutoContrast,
    Equalize,
    Rotate,
    Solarize,
    Color,
    Posterize,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

pub const ALL_OPS: [Op; 14] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Rotate,
    Op::Solarize,
    Op::Color,
    Op::Posterize,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// A `u8` image in CHW layout, borrowed mutably.
pub struct ImageMut<'a> {
    pub pixels: &'a mut [u8],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageMut<'_> {
    fn plane_len(&self) -> usize {
        self.height * self.width
    }
}

/// Applies `op` at `magnitude`; `negate` flips the direction of signed ops.
pub fn apply_op(img: &mut ImageMut<'_>, op: Op, magnitude: f32, negate: bool) {
    let level = magnitude.max(0.0) / MAX_LEVEL;
    let sign = if negate { -1.0 } else { 1.0 };
    // Enhancement factor as in the paper's TF code: 0.1 ..= 1.9 over 0..10.
    let enhance = level * 1.8 + 0.1;
    match op {
        Op::Identity => {}
        Op::AutoContrast => auto_contrast(img),
        Op::Equalize => equalize(img),
        Op::Rotate => {
            let a = (sign * 30.0 * level).to_radians();
            let (s, c) = a.sin_cos();
            affine(img, [c, -s, 0.0, s, c, 0.0]);
        }
        Op::Solarize => {
            // Threshold falls from 256 (no change) as the magnitude grows.
            let threshold = 256.0 - (level * 256.0).min(256.0);
            map_pixels(img.pixels, |v| if f32::from(v) >= threshold { 255 - v } else { v });
        }
        Op::Color => {
            if img.channels == 3 {
                let grey = greyscale(img);
                blend_with(img, &grey, enhance);
            }
        }
        Op::Posterize => {
            let bits = (8.0 - (level * 4.0).round()).clamp(1.0, 8.0) as u32;
            let mask = (0xffu32 << (8 - bits)) as u8;
            for p in img.pixels.iter_mut() {
                *p &= mask;
            }
        }
        Op::Contrast => {
            let grey = greyscale(img);
            let sum: u64 = grey.iter().map(|&v| u64::from(v)).sum();
            let mean = (sum as f64 / grey.len().max(1) as f64) as f32;
            map_pixels(img.pixels, |v| clamp_u8(mean + enhance * (f32::from(v) - mean)));
        }
        Op::Brightness => map_pixels(img.pixels, |v| clamp_u8(enhance * f32::from(v))),
        Op::Sharpness => sharpness(img, enhance),
        Op::ShearX => affine(img, [1.0, sign * 0.3 * level, 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY => affine(img, [1.0, 0.0, 0.0, sign * 0.3 * level, 1.0, 0.0]),
        Op::TranslateX => {
            let t = sign * 0.45 * level * img.width as f32;
            affine(img, [1.0, 0.0, t, 0.0, 1.0, 0.0]);
        }
        Op::TranslateY => {
            let t = sign * 0.45 * level * img.height as f32;
            affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, t]);
        }
    }
}

/// Rounds to the nearest integer (halves up) and saturates to 0..=255.
/// `as u8` saturates by itself; this avoids a libm `roundf` call per pixel,
/// which made every op several times slower than PIL's.
fn clamp_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

/// Applies a per-value mapping through a 256-entry lookup table.
fn map_pixels(pixels: &mut [u8], f: impl Fn(u8) -> u8) {
    let lut: [u8; 256] = std::array::from_fn(|v| f(v as u8));
    for p in pixels.iter_mut() {
        *p = lut[usize::from(*p)];
    }
}

fn greyscale(img: &ImageMut<'_>) -> Vec<u8> {
    let n = img.plane_len();
    if img.channels == 1 {
        return img.pixels.to_vec();
    }
    // PIL's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point, rounded.
    let (r, rest) = img.pixels.split_at(n);
    let (g, b) = rest.split_at(n);
    r.iter()
        .zip(g)
        .zip(&b[..n])
        .map(|((&r, &g), &b)| {
            ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// `degenerate + factor * (img - degenerate)`, with a one-plane degenerate
/// image shared by all channels.
fn blend_with(img: &mut ImageMut<'_>, degenerate: &[u8], factor: f32) {
    let n = img.plane_len();
    for plane in img.pixels.chunks_mut(n) {
        for (p, &d) in plane.iter_mut().zip(degenerate) {
            let d = f32::from(d);
            *p = clamp_u8(d + factor * (f32::from(*p) - d));
        }
    }
}

fn auto_contrast(img: &mut ImageMut<'_>) {
    let n = img.plane_len();
    for plane in img.pixels.chunks_mut(n) {
        let lo = plane.iter().fold(u8::MAX, |a, &b| a.min(b));
        let hi = plane.iter().fold(u8::MIN, |a, &b| a.max(b));
        if hi > lo {
            let scale = 255.0 / f32::from(hi - lo);
            map_pixels(plane, |v| clamp_u8(f32::from(v.saturating_sub(lo)) * scale));
        }
    }
}

fn equalize(img: &mut ImageMut<'_>) {
    let n = img.plane_len();
    for plane in img.pixels.chunks_mut(n) {
        let mut hist = [0usize; 256];
        for &p in plane.iter() {
            hist[p as usize] += 1;
        }
        // PIL's rule: the step leaves out the last non-empty bin.
        let last = hist.iter().rposition(|&c| c > 0).map_or(0, |i| hist[i]);
        let step = (n - last) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut acc = step / 2;
        for (v, count) in hist.iter().enumerate() {
            lut[v] = (acc / step).min(255) as u8;
            acc += count;
        }
        for p in plane.iter_mut() {
            *p = lut[*p as usize];
        }
    }
}

fn sharpness(img: &mut ImageMut<'_>, factor: f32) {
    let (h, w) = (img.height, img.width);
    if h < 3 || w < 3 {
        return;
    }
    let n = img.plane_len();
    for plane in img.pixels.chunks_mut(n) {
        // Smoothed copy with PIL's SMOOTH kernel (ones, 5 in the centre,
        // divided by 13 and rounded); the border stays as it is.
        let mut smooth = plane.to_vec();
        for y in 1..h - 1 {
            let (above, row, below) =
                (&plane[(y - 1) * w..y * w], &plane[y * w..(y + 1) * w], &plane[(y + 1) * w..(y + 2) * w]);
            let out = &mut smooth[y * w..(y + 1) * w];
            for x in 1..w - 1 {
                let column = |r: &[u8]| u32::from(r[x - 1]) + u32::from(r[x]) + u32::from(r[x + 1]);
                let s = column(above) + column(row) + column(below) + 4 * u32::from(row[x]);
                out[x] = ((s + 6) / 13) as u8;
            }
        }
        for (p, d) in plane.iter_mut().zip(smooth) {
            *p = clamp_u8(f32::from(d) + factor * (f32::from(*p) - f32::from(d)));
        }
    }
}

/// Warps the image by the affine map `m` taking output coordinates
/// (relative to the centre) to input coordinates, with nearest-neighbour
/// sampling (the default of the TF image ops the paper's RandAugment used,
/// and of torchvision's). Uncovered pixels get the grey fill.
fn affine(img: &mut ImageMut<'_>, m: [f32; 6]) {
    let (h, w) = (img.height, img.width);
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let m = m.map(f64::from);
    // Source coordinates walk along each output row in 32.32 fixed point:
    // an integer add per pixel, and the nearest pixel floor(v + 0.5) is a
    // shift (float-to-integer casts per pixel would dominate the op).
    const ONE: f64 = (1u64 << 32) as f64;
    let (step_x, step_y) = ((m[0] * ONE) as i64, (m[3] * ONE) as i64);
    // The source of every output pixel, once for all channels; `u32::MAX`
    // marks an uncovered pixel.
    let mut sources = Vec::with_capacity(h * w);
    for y in 0..h {
        let oy = y as f64 - cy;
        let x0 = -m[0] * cx + m[1] * oy + m[2] + cx;
        let y0 = -m[3] * cx + m[4] * oy + m[5] + cy;
        let (mut fx, mut fy) = (((x0 + 0.5) * ONE) as i64, ((y0 + 0.5) * ONE) as i64);
        for _ in 0..w {
            let (sx, sy) = ((fx >> 32) as u64, (fy >> 32) as u64);
            // Negative coordinates wrap to huge values and fail the test too.
            let inside = sx < w as u64 && sy < h as u64;
            sources.push(if inside { (sy as usize * w + sx as usize) as u32 } else { u32::MAX });
            fx += step_x;
            fy += step_y;
        }
    }
    let n = img.plane_len();
    let original = img.pixels.to_vec();
    for (src, dst) in original.chunks(n).zip(img.pixels.chunks_mut(n)) {
        for (d, &j) in dst.iter_mut().zip(&sources) {
            *d = if j == u32::MAX { FILL } else { src[j as usize] };
        }
    }
}

/// Zero-pads by `pad` on every side and crops back at a random offset.
pub fn pad_and_crop(img: &mut ImageMut<'_>, pad: usize, rng: &mut impl Rng) {
    if pad == 0 {
        return;
    }
    let (h, w) = (img.height, img.width);
    let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let n = img.plane_len();
    let source = img.pixels.to_vec();
    for c in 0..img.channels {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y as isize + dy, x as isize + dx);
                img.pixels[c * n + y * w + x] = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                    source[c * n + sy as usize * w + sx as usize]
                } else {
                    0
                };
            }
        }
    }
}

pub fn flip_horizontal(img: &mut ImageMut<'_>) {
    let w = img.width;
    for row in img.pixels.chunks_mut(w) {
        row.reverse();
    }
}

/// The augmentation a training stage applies, as written in configs:
/// `none`, `flip-crop` (pad-and-crop plus horizontal flip), or
/// `randaugment:N:M` (flip-crop, then RandAugment with N ops at magnitude M),
/// or `randaugment:N:M:P` with every chosen op applied with the fixed
/// probability P instead (P = 1 is torchvision's RandAugment).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Augment {
    None,
    FlipCrop,
    RandAugment {
        layers: usize,
        magnitude: f32,
        /// `None`: drawn per image from U(0.2, 0.8), as the paper's code does.
        probability: Option<f32>,
    },
}

impl Augment {
    /// Augments one image in place.
    pub fn apply(&self, img: &mut ImageMut<'_>, rng: &mut impl Rng) {
        self.apply_with(img, rng, true);
    }

    /// Augments one image in place; `pad_crop: false` leaves out the
    /// pad-and-crop (the image already came from a random resized crop).
    pub fn apply_with(&self, img: &mut ImageMut<'_>, rng: &mut impl Rng, pad_crop: bool) {
        if *self == Augment::None {
            return;
        }
        if pad_crop {
            // Pad by an eighth of the side, as CIFAR-style training does (4 of 32).
            let pad = (img.height.min(img.width) / 8).max(1);
            pad_and_crop(img, pad, rng);
        }
        if rng.random_bool(0.5) {
            flip_horizontal(img);
        }
        if let Augment::RandAugment { layers, magnitude, probability } = *self {
            let probability: f64 = match probability {
                Some(p) => f64::from(p),
                None => rng.random_range(0.2..0.8),
            };
            for _ in 0..layers {
                let op = ALL_OPS[rng.random_range(0..ALL_OPS.len())];
                let negate = rng.random_bool(0.5);
                if rng.random_bool(probability) {
                    apply_op(img, op, magnitude, negate);
                }
            }
        }
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Augment::None => write!(f, "none"),
            Augment::FlipCrop => write!(f, "flip-crop"),
            Augment::RandAugment { layers, magnitude, probability: None } => {
                write!(f, "randaugment:{layers}:{magnitude}")
            }
            Augment::RandAugment { layers, magnitude, probability: Some(p) } => {
                write!(f, "randaugment:{layers}:{magnitude}:{p}")
            }
        }
    }
}

impl FromStr for Augment {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, DataError> {
        let err = |m: &str| DataError::Augment { text: text.to_string(), message: m.to_string() };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(Augment::None),
            ["flip-crop"] => Ok(Augment::FlipCrop),
            ["randaugment", n, m, rest @ ..] if rest.len() <= 1 => {
                let layers = n.parse().map_err(|_| err("expected N (ops per image) to be a whole number"))?;
                let magnitude: f32 = m.parse().map_err(|_| err("expected M (magnitude) to be a number"))?;
                if !(0.0..=30.0).contains(&magnitude) {
                    return Err(err("expected M between 0 and 30"));
                }
                let probability = match rest.first() {
                    None => None,
                    Some(p) => match p.parse::<f32>() {
                        Ok(p) if (0.0..=1.0).contains(&p) => Some(p),
                        _ => return Err(err("expected P (probability of each op) between 0 and 1")),
                    },
                };
                Ok(Augment::RandAugment { layers, magnitude, probability })
            }
            _ => Err(err("expected `none`, `flip-crop`, `randaugment:N:M` or `randaugment:N:M:P`")),
        }
    }
}

impl Serialize for Augment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Augment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gradient(c: usize, h: usize, w: usize) -> Vec<u8> {
        (0..c * h * w).map(|i| ((i * 7) % 200 + 20) as u8).collect()
    }

    fn run(op: Op, magnitude: f32, negate: bool, pixels: &mut [u8], c: usize, h: usize, w: usize) {
        apply_op(&mut ImageMut { pixels, channels: c, height: h, width: w }, op, magnitude, negate);
    }

    #[test]
    fn identity_and_zero_magnitude_geometry_change_nothing() {
        let orig = gradient(1, 5, 5);
        for op in [Op::Identity, Op::Rotate, Op::ShearX, Op::ShearY, Op::TranslateX, Op::TranslateY] {
            let mut p = orig.clone();
            run(op, 0.0, false, &mut p, 1, 5, 5);
            assert_eq!(p, orig, "{op:?}");
        }
    }

    #[test]
    fn auto_contrast_stretches_to_full_range() {
        let mut p = vec![50, 100, 150, 100];
        run(Op::AutoContrast, 10.0, false, &mut p, 1, 2, 2);
        assert_eq!(p, vec![0, 128, 255, 128]);
    }

    #[test]
    fn equalize_spreads_a_narrow_histogram() {
        let mut p: Vec<u8> = (0..1024).map(|i| 100 + (i % 4) as u8).collect();
        run(Op::Equalize, 10.0, false, &mut p, 1, 32, 32);
        assert_eq!(*p.iter().min().unwrap(), 0);
        assert!(*p.iter().max().unwrap() >= 180, "{p:?}");
    }

    #[test]
    fn rotate_by_thirty_degrees_moves_pixels_and_fills_corners() {
        let mut p = vec![255u8; 81];
        run(Op::Rotate, 10.0, false, &mut p, 1, 9, 9);
        assert_eq!(p[0], FILL, "corner uncovered after rotation");
        assert_eq!(p[40], 255, "centre stays");
    }

    #[test]
    fn solarize_inverts_bright_pixels_only() {
        let mut p = vec![10, 200];
        run(Op::Solarize, 5.0, false, &mut p, 1, 1, 2); // threshold 128
        assert_eq!(p, vec![10, 55]);
    }

    #[test]
    fn color_is_a_no_op_on_grey_and_changes_rgb() {
        let mut g = vec![10, 20, 30, 40];
        run(Op::Color, 0.0, false, &mut g, 1, 2, 2);
        assert_eq!(g, vec![10, 20, 30, 40]);
        let mut rgb = vec![255, 0, 0, 0, 0, 255];
        run(Op::Color, 0.0, false, &mut rgb, 3, 1, 2); // factor 0.1: near grey
        assert!(rgb[0] < 120 && rgb[2] > 40, "{rgb:?}");
    }

    #[test]
    fn posterize_keeps_top_bits() {
        let mut p = vec![0xff, 0x37];
        run(Op::Posterize, 10.0, false, &mut p, 1, 1, 2); // 4 bits
        assert_eq!(p, vec![0xf0, 0x30]);
    }

    #[test]
    fn contrast_and_brightness_scale_around_their_pivots() {
        let mut p = vec![100, 200];
        run(Op::Brightness, 0.0, false, &mut p, 1, 1, 2); // factor 0.1
        assert_eq!(p, vec![10, 20]);
        let mut q = vec![100, 200];
        run(Op::Contrast, 0.0, false, &mut q, 1, 1, 2); // towards mean 150
        assert_eq!(q, vec![145, 155]);
    }

    #[test]
    fn sharpness_changes_interior_only() {
        let mut p = vec![0u8; 25];
        p[12] = 200;
        let before = p.clone();
        run(Op::Sharpness, 10.0, false, &mut p, 1, 5, 5); // factor 1.9: sharper
        assert!(p[12] > 200 || p[12] == 255);
        assert_eq!(p[0], before[0]);
        assert_eq!(p[24], before[24]);
    }

    #[test]
    fn translate_shifts_by_the_expected_pixels_and_direction() {
        // Level 10/10 shifts by 0.45 * width: 9 px of 20, nearest sampling.
        let mut p: Vec<u8> = (0..20).map(|i| i * 10).collect();
        run(Op::TranslateX, 10.0, false, &mut p, 1, 1, 20);
        assert_eq!(p[0], 90, "x=0 samples source x=9");
        assert_eq!(p[10], 190);
        assert_eq!(p[11], FILL, "beyond the edge is filled");
        let mut q: Vec<u8> = (0..20).map(|i| i * 10).collect();
        run(Op::TranslateX, 10.0, true, &mut q, 1, 1, 20);
        assert_eq!(q[8], FILL);
        assert_eq!(q[9], 0, "x=9 samples source x=0");
    }

    #[test]
    fn shear_moves_rows_by_their_offset_from_the_centre() {
        let mut p: Vec<u8> = (0..25).map(|i| (i % 5) as u8 * 50).collect();
        run(Op::ShearX, 10.0, false, &mut p, 1, 5, 5);
        assert_eq!(&p[10..15], &[0, 50, 100, 150, 200], "centre row is not sheared");
        assert_ne!(&p[0..5], &[0, 50, 100, 150, 200]);
    }

    #[test]
    fn randaugment_is_reproducible_for_a_seed() {
        let aug: Augment = "randaugment:2:9".parse().unwrap();
        let go = |seed| {
            let mut p = gradient(3, 8, 8);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            aug.apply(&mut ImageMut { pixels: &mut p, channels: 3, height: 8, width: 8 }, &mut rng);
            p
        };
        assert_eq!(go(1), go(1));
        assert_ne!(go(1), go(2));
        assert!("randaugment:2".parse::<Augment>().is_err());
        assert!("randaugment:2:9:1.5".parse::<Augment>().is_err());
        assert_eq!("randaugment:2:9:1".parse::<Augment>().unwrap().to_string(), "randaugment:2:9:1");
        // P = 0 applies no op: only the flip and crop are left.
        let flip_crop_only = |text: &str, seed| {
            let mut p = gradient(3, 8, 8);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            text.parse::<Augment>()
                .unwrap()
                .apply(&mut ImageMut { pixels: &mut p, channels: 3, height: 8, width: 8 }, &mut rng);
            p
        };
        for seed in 0..8 {
            assert_eq!(flip_crop_only("randaugment:2:9:0", seed), flip_crop_only("flip-crop", seed), "seed {seed}");
        }
        assert_eq!("randaugment:2:15".parse::<Augment>().unwrap().to_string(), "randaugment:2:15");
    }
}
