//! torchvision's `RandAugment(num_ops, magnitude, num_magnitude_bins=31,
//! interpolation=NEAREST, fill=None)` on 8-bit RGB images.
//!
//! The op list, its order (which the uniform op draw indexes), the magnitude tables, the sign
//! coin and the mapping from a magnitude to each op's parameter follow pytorch/vision
//! `torchvision/transforms/autoaugment.py` at commit 0352a47a42bdaefa6d058c4fd322a952fdb48edc
//! (`RandAugment._augmentation_space`, `RandAugment.forward`, `_apply_op`), with the affine
//! geometry of `_get_inverse_affine_matrix` in `torchvision/transforms/functional.py`. That
//! revision solarizes at `linspace(255, 0)` and shears by `atan(magnitude)` about the top-left
//! corner (`center=[0, 0]`); older torchvision (e.g. commit
//! f4796d21e43e2f0659e9e3d3d4eb34f618e49d60) used `linspace(256, 0)` and shear angles of
//! `degrees(magnitude)` about the centre.
//!
//! The training pipeline feeds PIL images, so where torchvision's PIL and uint8-tensor paths
//! disagree the PIL one is followed: Pillow's `L` conversion (ITU-R 601 weights in 16-bit
//! fixed point, rounded) for Color and Contrast, Contrast's mean rounded to an integer,
//! `ImageOps.equalize`'s step of `(n - last) // 256`, `Image.blend`'s truncation to `u8`, and
//! output pixel centres mapped through the inverse matrix and sampled with `floor` for the
//! nearest-neighbour warps. The results are meant to do what those ops do, not to match Pillow
//! bit for bit (Pillow's 3×3 filter and fixed-point affine loops round a little differently).

use image::{Rgb, RgbImage};

use crate::rng::SplitMix64;

/// torchvision's default number of magnitude bins (magnitudes 0..=30).
pub const NUM_MAGNITUDE_BINS: u32 = 31;

/// One RandAugment operation, in torchvision's dictionary order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

impl Op {
    /// The order matters: torchvision draws `randint(len(op_meta))` and indexes the dict's
    /// keys, so a seed picks the same op only if the order is the same.
    pub const ALL: [Op; 14] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
    ];

    /// torchvision's name for the op.
    pub fn name(self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateX => "TranslateX",
            Op::TranslateY => "TranslateY",
            Op::Rotate => "Rotate",
            Op::Brightness => "Brightness",
            Op::Color => "Color",
            Op::Contrast => "Contrast",
            Op::Sharpness => "Sharpness",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
        }
    }
}

/// One entry of the augmentation space at a given magnitude bin: the unsigned parameter and
/// whether a coin may negate it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpMagnitude {
    pub op: Op,
    pub magnitude: f64,
    pub signed: bool,
}

/// Element `i` of `torch.linspace(start, end, steps)` for a float32 tensor: ATen fills the
/// first half forwards from `start` and the second half backwards from `end`, in f32.
fn linspace(start: f32, end: f32, steps: u32, i: u32) -> f32 {
    if steps <= 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f32;
    if i < steps / 2 {
        start + step * i as f32
    } else {
        end - step * (steps - 1 - i) as f32
    }
}

/// torchvision's `RandAugment._augmentation_space(num_bins, [width, height])`, read at bin
/// `magnitude`. A bin past the end reads the last one (torch would raise; the run file's
/// validation refuses such values before they get here).
pub fn augmentation_space(
    num_bins: u32,
    magnitude: u32,
    width: u32,
    height: u32,
) -> [OpMagnitude; 14] {
    let bins = num_bins.max(1);
    let i = magnitude.min(bins - 1);
    // torch.linspace takes Python floats, so the end points are rounded to f32 first.
    let lin = |end: f64| f64::from(linspace(0.0, end as f32, bins, i));
    let translate = |side: u32| lin(150.0 / 331.0 * f64::from(side));
    // `8 - (arange(bins) / ((bins - 1) / 4)).round().int()`: a float32 quotient rounded half
    // to even.
    let posterize_bits = if bins > 1 {
        let q = (i as f32 / ((bins - 1) as f32 / 4.0)).round_ties_even();
        8.0 - f64::from(q)
    } else {
        8.0
    };
    Op::ALL.map(|op| {
        let (magnitude, signed) = match op {
            Op::Identity | Op::AutoContrast | Op::Equalize => (0.0, false),
            Op::ShearX | Op::ShearY => (lin(0.3), true),
            Op::TranslateX => (translate(width), true),
            Op::TranslateY => (translate(height), true),
            Op::Rotate => (lin(30.0), true),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => (lin(0.9), true),
            Op::Posterize => (posterize_bits, false),
            Op::Solarize => (f64::from(linspace(255.0, 0.0, bins, i)), false),
        };
        OpMagnitude {
            op,
            magnitude,
            signed,
        }
    })
}

/// `RandAugment(num_ops, magnitude, num_magnitude_bins)` with nearest interpolation and
/// fill 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandAugment {
    pub num_ops: u32,
    pub magnitude: u32,
    pub num_magnitude_bins: u32,
}

impl RandAugment {
    /// torchvision's 31 magnitude bins.
    pub fn new(num_ops: u32, magnitude: u32) -> Self {
        Self {
            num_ops,
            magnitude,
            num_magnitude_bins: NUM_MAGNITUDE_BINS,
        }
    }

    /// The ops and signed magnitudes that `rng` picks for one image of `width × height`, in
    /// the order they are applied. Each op is drawn uniformly with replacement, then a sign
    /// coin for signed ops, as `forward` does.
    pub fn draw(&self, width: u32, height: u32, rng: &mut SplitMix64) -> Vec<(Op, f64)> {
        // None of the ops changes the image size, so the space is the same for every draw.
        let space = augmentation_space(self.num_magnitude_bins, self.magnitude, width, height);
        (0..self.num_ops)
            .map(|_| {
                let pick = space[rng.below(space.len() as u64) as usize];
                let negate = pick.signed && rng.below(2) == 1;
                let m = if negate {
                    -pick.magnitude
                } else {
                    pick.magnitude
                };
                (pick.op, m)
            })
            .collect()
    }

    /// Applies `num_ops` randomly drawn ops to `img`.
    pub fn apply(&self, img: &RgbImage, rng: &mut SplitMix64) -> RgbImage {
        let mut out = img.clone();
        for (op, m) in self.draw(img.width(), img.height(), rng) {
            out = apply_op(&out, op, m);
        }
        out
    }
}

/// torchvision's `_apply_op(img, op_name, magnitude)` on a PIL RGB image.
pub fn apply_op(img: &RgbImage, op: Op, magnitude: f64) -> RgbImage {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let centre = (w * 0.5, h * 0.5);
    // Factors reach Pillow's `Image.blend` as a C float.
    let factor = (1.0 + magnitude) as f32;
    match op {
        Op::Identity => img.clone(),
        Op::ShearX => warp_nearest(
            img,
            inverse_affine(
                (0.0, 0.0),
                0.0,
                (0.0, 0.0),
                (magnitude.atan().to_degrees(), 0.0),
            ),
        ),
        Op::ShearY => warp_nearest(
            img,
            inverse_affine(
                (0.0, 0.0),
                0.0,
                (0.0, 0.0),
                (0.0, magnitude.atan().to_degrees()),
            ),
        ),
        // `int(magnitude)`: whole pixels, truncated toward zero.
        Op::TranslateX => warp_nearest(
            img,
            inverse_affine(centre, 0.0, (magnitude.trunc(), 0.0), (0.0, 0.0)),
        ),
        Op::TranslateY => warp_nearest(
            img,
            inverse_affine(centre, 0.0, (0.0, magnitude.trunc()), (0.0, 0.0)),
        ),
        // `F.rotate` turns counter-clockwise for a positive angle; the affine convention is
        // clockwise, hence the negation (as `F.rotate` does).
        Op::Rotate => warp_nearest(
            img,
            inverse_affine(centre, -magnitude, (0.0, 0.0), (0.0, 0.0)),
        ),
        Op::Brightness => map_pixels(img, |_, px| each(px, |v| blend(0, v, factor))),
        Op::Color => map_pixels(img, |_, px| {
            let l = luma(px);
            each(px, |v| blend(l, v, factor))
        }),
        Op::Contrast => {
            let n = u64::from(img.width()) * u64::from(img.height());
            let sum: u64 = img.pixels().map(|&px| u64::from(luma(px))).sum();
            // ImageEnhance.Contrast: `int(mean + 0.5)` of the L image.
            let mean = (sum as f64 / n.max(1) as f64 + 0.5) as u8;
            map_pixels(img, |_, px| each(px, |v| blend(mean, v, factor)))
        }
        Op::Sharpness => {
            let smooth = smooth(img);
            map_pixels(img, |(x, y), px| {
                let d = smooth.get_pixel(x, y);
                Rgb([
                    blend(d[0], px[0], factor),
                    blend(d[1], px[1], factor),
                    blend(d[2], px[2], factor),
                ])
            })
        }
        Op::Posterize => {
            let bits = (magnitude as i64).clamp(0, 8) as u32;
            // The low `8 - bits` bits cleared; u16 so that bits = 0 does not overflow.
            let mask = (0xFF00u16 >> bits) as u8;
            map_pixels(img, |_, px| each(px, |v| v & mask))
        }
        Op::Solarize => map_pixels(img, |_, px| {
            each(px, |v| {
                if f64::from(v) >= magnitude {
                    255 - v
                } else {
                    v
                }
            })
        }),
        Op::AutoContrast => apply_luts(img, autocontrast_lut),
        Op::Equalize => apply_luts(img, equalize_lut),
    }
}

/// torchvision's `_get_inverse_affine_matrix(center, angle, translate, scale=1, shear)`: the
/// matrix taking an output point to the input point it samples, in pixel coordinates whose
/// origin is the image's top-left corner (pixel centres at `+0.5`). Angles in degrees,
/// positive = clockwise; `translate` in pixels.
fn inverse_affine(
    (cx, cy): (f64, f64),
    angle: f64,
    (tx, ty): (f64, f64),
    (shear_x, shear_y): (f64, f64),
) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear_x.to_radians(), shear_y.to_radians());
    // Forward linear part: rotation × shear, determinant 1, so its inverse is the adjugate.
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let (ia, ib, ic, id) = (d, -b, -c, a);
    // in = C · M⁻¹ · (out − C − T).
    let (ox, oy) = (-cx - tx, -cy - ty);
    [
        ia,
        ib,
        ia * ox + ib * oy + cx,
        ic,
        id,
        ic * ox + id * oy + cy,
    ]
}

/// Pillow's `Image.transform(size, AFFINE, matrix, NEAREST)` with fill 0: each output pixel
/// centre goes through `m` and takes the input pixel it lands in, or black outside the image.
fn warp_nearest(img: &RgbImage, m: [f64; 6]) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (wf, hf) = (f64::from(w), f64::from(h));
    RgbImage::from_fn(w, h, |x, y| {
        let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
        let sx = m[0] * px + m[1] * py + m[2];
        let sy = m[3] * px + m[4] * py + m[5];
        if (0.0..wf).contains(&sx) && (0.0..hf).contains(&sy) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

fn map_pixels(img: &RgbImage, f: impl Fn((u32, u32), Rgb<u8>) -> Rgb<u8>) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        f((x, y), *img.get_pixel(x, y))
    })
}

fn each(px: Rgb<u8>, f: impl Fn(u8) -> u8) -> Rgb<u8> {
    Rgb(px.0.map(f))
}

/// Pillow's `Image.blend(degenerate, image, factor)` for one 8-bit sample: f32 arithmetic,
/// clipped, truncated.
fn blend(degenerate: u8, v: u8, factor: f32) -> u8 {
    let d = f32::from(degenerate);
    (d + factor * (f32::from(v) - d)).clamp(0.0, 255.0) as u8
}

/// Pillow's RGB to `L` conversion.
fn luma(px: Rgb<u8>) -> u8 {
    let [r, g, b] = px.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `ImageFilter.SMOOTH` (3×3 kernel, 5 in the centre, 1 around, divided by 13), rounded; the
/// one-pixel border is copied unfiltered, as Pillow does, and so is an image too small for the
/// kernel.
fn smooth(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    if w < 3 || h < 3 {
        return img.clone();
    }
    RgbImage::from_fn(w, h, |x, y| {
        if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
            return *img.get_pixel(x, y);
        }
        let mut sum = [0u32; 3];
        for dy in 0..3 {
            for dx in 0..3 {
                let weight = if dx == 1 && dy == 1 { 5 } else { 1 };
                let p = img.get_pixel(x + dx - 1, y + dy - 1);
                for c in 0..3 {
                    sum[c] += weight * u32::from(p[c]);
                }
            }
        }
        // sum / 13 rounded to nearest; never a tie, since 13 is odd.
        Rgb(sum.map(|s| ((2 * s + 13) / 26) as u8))
    })
}

/// Applies a per-channel lookup table built from that channel's histogram.
fn apply_luts(img: &RgbImage, lut_of: fn(&[u64; 256]) -> [u8; 256]) -> RgbImage {
    let mut hist = [[0u64; 256]; 3];
    for px in img.pixels() {
        for c in 0..3 {
            hist[c][usize::from(px[c])] += 1;
        }
    }
    let luts = hist.each_ref().map(lut_of);
    map_pixels(img, |_, px| {
        Rgb([
            luts[0][usize::from(px[0])],
            luts[1][usize::from(px[1])],
            luts[2][usize::from(px[2])],
        ])
    })
}

fn identity_lut() -> [u8; 256] {
    std::array::from_fn(|i| i as u8)
}

/// `ImageOps.autocontrast(img)` (no cutoff) for one channel: the lowest and highest values
/// present are stretched to 0 and 255; a single-valued channel is left alone.
fn autocontrast_lut(hist: &[u64; 256]) -> [u8; 256] {
    let lo = hist.iter().position(|&n| n > 0);
    let hi = hist.iter().rposition(|&n| n > 0);
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return identity_lut();
    };
    if hi <= lo {
        return identity_lut();
    }
    let scale = 255.0 / (hi - lo) as f64;
    let offset = -(lo as f64) * scale;
    std::array::from_fn(|i| (i as f64 * scale + offset).trunc().clamp(0.0, 255.0) as u8)
}

/// `ImageOps.equalize(img)` for one channel: values mapped through the cumulative histogram
/// in steps of `(pixels − count of the highest value) // 256`. A channel with one value, or
/// too few pixels for a step, is left alone.
fn equalize_lut(hist: &[u64; 256]) -> [u8; 256] {
    let present = hist.iter().filter(|&&n| n > 0).count();
    let last = hist.iter().rev().find(|&&n| n > 0).copied().unwrap_or(0);
    let total: u64 = hist.iter().sum();
    let step = (total - last) / 256;
    if present <= 1 || step == 0 {
        return identity_lut();
    }
    let mut lut = [0u8; 256];
    let mut n = step / 2;
    for (out, &count) in lut.iter_mut().zip(hist) {
        // The highest value maps past 255; Pillow's `point` clips it.
        *out = (n / step).min(255) as u8;
        n += count;
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space_at(m: u32, size: u32) -> Vec<(Op, f64, bool)> {
        augmentation_space(NUM_MAGNITUDE_BINS, m, size, size)
            .iter()
            .map(|e| (e.op, e.magnitude, e.signed))
            .collect()
    }

    fn lookup(m: u32, size: u32, op: Op) -> (f64, bool) {
        let e = space_at(m, size)
            .into_iter()
            .find(|e| e.0 == op)
            .expect("op present");
        (e.1, e.2)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * b.abs().max(1.0)
    }

    /// The table of pytorch/vision `torchvision/transforms/autoaugment.py` at commit
    /// 0352a47a42bdaefa6d058c4fd322a952fdb48edc, `RandAugment._augmentation_space` with 31
    /// bins: linspace(0, 0.3) for shears, linspace(0, 150/331 · side) for translations,
    /// linspace(0, 30) for Rotate, linspace(0, 0.9) for the four enhancers (all signed),
    /// `8 - round(i / 7.5)` bits for Posterize, linspace(255, 0) for Solarize.
    #[test]
    fn augmentation_space_matches_torchvision_for_31_bins() {
        let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(
            ops,
            [
                "Identity",
                "ShearX",
                "ShearY",
                "TranslateX",
                "TranslateY",
                "Rotate",
                "Brightness",
                "Color",
                "Contrast",
                "Sharpness",
                "Posterize",
                "Solarize",
                "AutoContrast",
                "Equalize"
            ]
        );
        for m in [0u32, 1, 5, 9, 10, 15, 16, 20, 29, 30] {
            let f = f64::from(m) / 30.0;
            let size = 224;
            let cases = [
                (Op::ShearX, 0.3 * f, true),
                (Op::ShearY, 0.3 * f, true),
                (Op::TranslateX, 150.0 / 331.0 * 224.0 * f, true),
                (Op::TranslateY, 150.0 / 331.0 * 224.0 * f, true),
                (Op::Rotate, 30.0 * f, true),
                (Op::Brightness, 0.9 * f, true),
                (Op::Color, 0.9 * f, true),
                (Op::Contrast, 0.9 * f, true),
                (Op::Sharpness, 0.9 * f, true),
                (Op::Solarize, 255.0 * (1.0 - f), false),
                (Op::Identity, 0.0, false),
                (Op::AutoContrast, 0.0, false),
                (Op::Equalize, 0.0, false),
            ];
            for (op, want, signed) in cases {
                let (got, s) = lookup(m, size, op);
                assert!(close(got, want), "m={m} {op:?}: {got} vs {want}");
                assert_eq!(s, signed, "m={m} {op:?} signedness");
            }
        }
        // Posterize bits, bins 0..=30: 8 - round(i / 7.5).
        let bits: Vec<f64> = (0..31).map(|m| lookup(m, 224, Op::Posterize).0).collect();
        let mut want = Vec::new();
        want.extend([8.0; 4]); // 0..=3
        want.extend([7.0; 8]); // 4..=11
        want.extend([6.0; 7]); // 12..=18
        want.extend([5.0; 8]); // 19..=26
        want.extend([4.0; 4]); // 27..=30
        assert_eq!(bits, want);
        assert!(!lookup(9, 224, Op::Posterize).1);
        // The default magnitude 9, written out.
        assert!(close(lookup(9, 224, Op::ShearX).0, 0.09));
        assert!(close(lookup(9, 224, Op::Rotate).0, 9.0));
        assert!(close(lookup(9, 224, Op::Brightness).0, 0.27));
        assert!(close(lookup(9, 331, Op::TranslateX).0, 45.0));
        assert_eq!(lookup(9, 224, Op::Posterize).0, 7.0);
        assert_eq!(lookup(9, 224, Op::Solarize).0, 178.5);
        // The translation tables follow their own side.
        let e = augmentation_space(31, 30, 100, 331);
        assert!(close(e[3].magnitude, 150.0 / 331.0 * 100.0));
        assert!(close(e[4].magnitude, 150.0));
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 255 / (w - 1).max(1)) as u8,
                (y * 255 / (h - 1).max(1)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn identity_and_neutral_magnitudes_change_nothing() {
        let img = gradient(17, 11);
        assert_eq!(apply_op(&img, Op::Identity, 0.0), img);
        for op in [
            Op::Brightness,
            Op::Color,
            Op::Contrast,
            Op::Sharpness,
            Op::ShearX,
            Op::ShearY,
            Op::TranslateX,
            Op::TranslateY,
            Op::Rotate,
        ] {
            assert_eq!(apply_op(&img, op, 0.0), img, "{op:?} at magnitude 0");
        }
        assert_eq!(apply_op(&img, Op::Posterize, 8.0), img);
        // Threshold 256: nothing is at or above it.
        assert_eq!(apply_op(&img, Op::Solarize, 256.0), img);
    }

    #[test]
    fn brightness_scales_and_clips() {
        let img = RgbImage::from_pixel(2, 2, Rgb([100, 200, 3]));
        let brighter = apply_op(&img, Op::Brightness, 0.5);
        assert_eq!(*brighter.get_pixel(0, 0), Rgb([150, 255, 4]));
        let darker = apply_op(&img, Op::Brightness, -0.5);
        assert_eq!(*darker.get_pixel(1, 1), Rgb([50, 100, 1]));
    }

    #[test]
    fn color_at_minus_one_is_greyscale() {
        let img = gradient(9, 9);
        let grey = apply_op(&img, Op::Color, -1.0);
        for (g, p) in grey.pixels().zip(img.pixels()) {
            assert_eq!(g[0], g[1]);
            assert_eq!(g[1], g[2]);
            assert_eq!(g[0], luma(*p));
        }
    }

    #[test]
    fn contrast_pulls_towards_the_mean() {
        let img = RgbImage::from_fn(2, 1, |x, _| Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let flat = apply_op(&img, Op::Contrast, -1.0);
        assert!(flat.pixels().all(|p| *p == Rgb([100; 3])), "{flat:?}");
    }

    #[test]
    fn sharpness_keeps_the_border_and_smooths_at_minus_one() {
        let mut img = RgbImage::from_pixel(5, 5, Rgb([0; 3]));
        img.put_pixel(2, 2, Rgb([130; 3]));
        img.put_pixel(4, 4, Rgb([77; 3]));
        let s = apply_op(&img, Op::Sharpness, -1.0);
        assert_eq!(s.get_pixel(2, 2)[0], 50); // 130 * 5 / 13
        assert_eq!(s.get_pixel(1, 1)[0], 10); // 130 / 13, rounded
        assert_eq!(s.get_pixel(4, 4)[0], 77);
        // Sharpening pushes the centre away from its blur.
        let sharp = apply_op(&img, Op::Sharpness, 0.5);
        assert_eq!(sharp.get_pixel(2, 2)[0], 170); // 50 + 1.5 * (130 - 50)
        assert_eq!(sharp.get_pixel(1, 1)[0], 0); // 10 + 1.5 * (0 - 10), clipped
    }

    #[test]
    fn posterize_keeps_the_top_bits() {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(y * 16 + x) as u8; 3]));
        for bits in 1..=8u32 {
            let p = apply_op(&img, Op::Posterize, f64::from(bits));
            let mask = !((1u16 << (8 - bits)) - 1) as u8;
            for (a, b) in p.pixels().zip(img.pixels()) {
                assert_eq!(a[0], b[0] & mask, "bits {bits}");
            }
        }
        assert_eq!(
            apply_op(&img, Op::Posterize, 4.0).get_pixel(15, 15)[0],
            0xF0
        );
    }

    #[test]
    fn solarize_inverts_at_and_above_the_threshold() {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(y * 16 + x) as u8; 3]));
        let s = apply_op(&img, Op::Solarize, 178.5);
        for (a, b) in s.pixels().zip(img.pixels()) {
            let want = if b[0] >= 179 { 255 - b[0] } else { b[0] };
            assert_eq!(a[0], want);
        }
        let s = apply_op(&img, Op::Solarize, 128.0);
        assert_eq!(s.get_pixel(0, 8)[0], 127);
        assert_eq!(s.get_pixel(15, 7)[0], 127);
        // Threshold 0 inverts everything.
        let all = apply_op(&img, Op::Solarize, 0.0);
        assert!(
            all.pixels()
                .zip(img.pixels())
                .all(|(a, b)| a[0] == 255 - b[0])
        );
    }

    #[test]
    fn autocontrast_stretches_each_channel_to_the_full_range() {
        let img = RgbImage::from_fn(4, 4, |x, y| {
            Rgb([50 + (x * 4 + y) as u8 * 10, 100 + x as u8, 42])
        });
        let a = apply_op(&img, Op::AutoContrast, 0.0);
        for c in 0..2 {
            let lo = a.pixels().map(|p| p[c]).min();
            let hi = a.pixels().map(|p| p[c]).max();
            assert_eq!((lo, hi), (Some(0), Some(255)), "channel {c}");
        }
        assert!(a.pixels().all(|p| p[2] == 42), "a constant channel stays");
        // Order preserved: the channel was increasing in x * 4 + y.
        assert_eq!(a.get_pixel(0, 1)[0], 17); // (60 - 50) * 255 / 150
    }

    #[test]
    fn equalize_flattens_the_histogram_and_leaves_constant_channels() {
        // Red: a skewed ramp (most pixels dark); green: constant; blue: two values.
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let i = y * 64 + x;
            Rgb([((i * i) >> 16) as u8, 99, if x < 3 { 10 } else { 20 }])
        });
        let e = apply_op(&img, Op::Equalize, 0.0);
        assert!(e.pixels().all(|p| p[1] == 99), "constant channel changed");
        let mut hist = [0u32; 4];
        for p in e.pixels() {
            hist[usize::from(p[0] / 64)] += 1;
        }
        // 4096 pixels over four quarter-ranges: about 1024 each.
        for (q, &n) in hist.iter().enumerate() {
            assert!((800..1300).contains(&n), "quarter {q} holds {n}: {hist:?}");
        }
        let mut before = [0u32; 4];
        for p in img.pixels() {
            before[usize::from(p[0] / 64)] += 1;
        }
        assert!(before[0] > 2000, "the input was not skewed: {before:?}");
        // Two values: the lower maps to 0 (PIL's rule: step = (4096 - 3904) // 256 = 0 keeps
        // it unchanged).
        let blue: std::collections::BTreeSet<u8> = e.pixels().map(|p| p[2]).collect();
        assert_eq!(blue.into_iter().collect::<Vec<_>>(), [10, 20]);
    }

    /// A 5×5 black image with one marked pixel; returns where the mark ends up.
    fn marked_moves(op: Op, magnitude: f64, at: (u32, u32)) -> Vec<(u32, u32)> {
        let mut img = RgbImage::new(5, 5);
        img.put_pixel(at.0, at.1, Rgb([255, 1, 2]));
        let out = apply_op(&img, op, magnitude);
        out.enumerate_pixels()
            .filter(|(_, _, p)| **p == Rgb([255, 1, 2]))
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn rotate_is_counter_clockwise_about_the_centre() {
        // Right-middle goes to top-middle for +90°, bottom-middle for −90°.
        assert_eq!(marked_moves(Op::Rotate, 90.0, (4, 2)), [(2, 0)]);
        assert_eq!(marked_moves(Op::Rotate, -90.0, (4, 2)), [(2, 4)]);
        assert_eq!(marked_moves(Op::Rotate, 90.0, (2, 2)), [(2, 2)]);
        assert_eq!(marked_moves(Op::Rotate, 180.0, (0, 1)), [(4, 3)]);
        // Corners rotated by 45° leave the image and are filled with black.
        let out = apply_op(&RgbImage::from_pixel(5, 5, Rgb([9; 3])), Op::Rotate, 45.0);
        assert_eq!(*out.get_pixel(0, 0), Rgb([0; 3]));
        assert_eq!(*out.get_pixel(2, 2), Rgb([9; 3]));
    }

    #[test]
    fn translate_shifts_whole_pixels_and_fills_black() {
        let img = gradient(6, 4);
        let t = apply_op(&img, Op::TranslateX, 2.7); // int(2.7) = 2
        for y in 0..4 {
            for x in 0..6 {
                let want = if x >= 2 {
                    *img.get_pixel(x - 2, y)
                } else {
                    Rgb([0; 3])
                };
                assert_eq!(*t.get_pixel(x, y), want, "({x}, {y})");
            }
        }
        let t = apply_op(&img, Op::TranslateY, -1.9); // int(-1.9) = -1
        for y in 0..4 {
            for x in 0..6 {
                let want = if y < 3 {
                    *img.get_pixel(x, y + 1)
                } else {
                    Rgb([0; 3])
                };
                assert_eq!(*t.get_pixel(x, y), want, "({x}, {y})");
            }
        }
    }

    #[test]
    fn shear_moves_rows_about_the_top_left_corner() {
        // ShearX(m): output (x, y) samples input (x + m·y, y), torchvision's
        // (1, m, 0, 0, 1, 0) like the official AutoAugment; row 0 stays.
        let img = gradient(8, 8);
        let s = apply_op(&img, Op::ShearX, 0.5);
        for y in 0..8u32 {
            for x in 0..8u32 {
                let sx = f64::from(x) + 0.5 + 0.5 * (f64::from(y) + 0.5);
                let want = if sx < 8.0 {
                    *img.get_pixel(sx as u32, y)
                } else {
                    Rgb([0; 3])
                };
                assert_eq!(*s.get_pixel(x, y), want, "({x}, {y})");
            }
        }
        // ShearY(m): output (x, y) samples input (x, y + m·x); column 0 stays.
        let s = apply_op(&img, Op::ShearY, -0.5);
        for y in 0..8u32 {
            for x in 0..8u32 {
                let sy = f64::from(y) + 0.5 - 0.5 * (f64::from(x) + 0.5);
                let want = if sy >= 0.0 {
                    *img.get_pixel(x, sy as u32)
                } else {
                    Rgb([0; 3])
                };
                assert_eq!(*s.get_pixel(x, y), want, "({x}, {y})");
            }
        }
    }

    #[test]
    fn draws_cover_every_op_and_both_signs() {
        let ra = RandAugment::new(2, 9);
        let mut rng = SplitMix64(5);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..2000 {
            let ops = ra.draw(32, 32, &mut rng);
            assert_eq!(ops.len(), 2);
            for (op, m) in ops {
                let e = seen.entry(op).or_insert((0, 0));
                if m < 0.0 {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
        assert_eq!(seen.len(), 14, "{seen:?}");
        for (op, (neg, pos)) in seen {
            // 4000 draws over 14 ops: about 286 each.
            assert!((200..380).contains(&(neg + pos)), "{op:?}: {neg} + {pos}");
            let signed = !matches!(
                op,
                Op::Identity | Op::Posterize | Op::Solarize | Op::AutoContrast | Op::Equalize
            );
            if signed {
                assert!(
                    neg > 90 && pos > 90,
                    "{op:?}: {neg} negative, {pos} positive"
                );
            } else {
                assert_eq!(neg, 0, "{op:?} is unsigned");
            }
        }
    }

    #[test]
    fn apply_is_determined_by_the_rng() {
        let img = gradient(24, 24);
        let ra = RandAugment::new(2, 9);
        let a = ra.apply(&img, &mut SplitMix64(3));
        assert_eq!(a, ra.apply(&img, &mut SplitMix64(3)));
        let differ = (0..20u64)
            .filter(|&s| ra.apply(&img, &mut SplitMix64(100 + s)) != a)
            .count();
        assert!(differ >= 15, "only {differ}/20 seeds changed the output");
        assert_eq!(RandAugment::new(0, 9).apply(&img, &mut SplitMix64(3)), img);
    }
}
