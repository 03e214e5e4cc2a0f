//! CLIP preprocessing that reproduces torchvision on PIL images bit for bit.
//!
//! Evaluation: `Resize(size, BICUBIC)` (shorter side = `size`, longer side truncated),
//! `CenterCrop(size)`, `ToTensor`, `Normalize(CLIP_MEAN, CLIP_STD)`. Training:
//! `RandomResizedCrop(size, scale, ratio, BICUBIC)`, an optional horizontal flip and an
//! optional `RandAugment` ([`crate::randaugment`], which follows torchvision's ops but not
//! Pillow's pixels bit for bit).
//!
//! The resampler is Pillow's `ImagingResample` for 8-bit images (Resample.c): double-precision
//! bicubic weights (a = −0.5, support widened by the downscale factor, i.e. antialiased),
//! rounded to 22-bit fixed point, one pass per axis with `u8` rounding in between (horizontal
//! first, except where Pillow 13 goes vertical first; see `resample`). It is written out here
//! instead of using `fast_image_resize` because that crate quantises weights to at most 15
//! bits and so differs from Pillow on some pixels (measured in `tests/preprocess.rs`); the
//! models were trained and evaluated on Pillow's output. Every output pixel depends only on
//! its own weights, so resizing only the pixels the centre crop keeps is exactly
//! resize-then-crop.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use clipstock_tensors::IoError;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, Limits, RgbImage};

use crate::DataError;
use crate::randaugment::RandAugment;
use crate::rng::{SplitMix64, mix64};

/// OpenAI CLIP's normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (RGB).
// Written digit for digit as in OpenAI's `clip.py`, so a reader can match them; two digits
// are below f32 resolution.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Refuses images whose header declares more pixels than this, before decoding them.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// Pillow's `DecompressionBombError` threshold: `2 * Image.MAX_IMAGE_PIXELS`.
    fn default() -> Self {
        Self {
            max_pixels: 178_956_970,
        }
    }
}

/// Reads and decodes an image file; see [`decode_bytes`].
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(IoError::at("read image", path))?;
    decode_bytes(&bytes, path, limits)
}

/// Decodes a PNG or JPEG (format sniffed from the content, not from `path`) into 8-bit RGB,
/// as PIL's `Image.open(path).convert("RGB")` does: alpha dropped, grey replicated, 16-bit
/// RGB(A)/grey+alpha reduced to their high byte, 16-bit grey clamped to 255 (PIL's `I;16` to
/// `RGB` conversion), CMYK/YCCK JPEG converted to RGB. `path` is only used in errors.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &DecodeLimits,
) -> Result<RgbImage, DataError> {
    // Decoder messages can end in a newline, which would split log lines and JSON reasons.
    let fail = |reason: String| DataError::Decode {
        path: path.to_path_buf(),
        reason: reason.trim_end().to_string(),
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        fail(format!(
            "not a PNG or JPEG file (first bytes {:02x?})",
            &bytes[..bytes.len().min(8)]
        ))
    })?;
    let check = |(w, h): (u32, u32)| -> Result<(), DataError> {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > limits.max_pixels {
            return Err(fail(format!(
                "{w}x{h} = {pixels} pixels exceeds the limit of {} (a decompression bomb?)",
                limits.max_pixels
            )));
        }
        if pixels == 0 {
            return Err(fail(format!("the header declares an empty {w}x{h} image")));
        }
        Ok(())
    };
    // The pixel check above runs first; this only bounds what a decoder may allocate for a
    // legitimate image (16-bit RGBA is 8 bytes a pixel).
    let mut alloc = Limits::default();
    alloc.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    let decoded = match format {
        ImageFormat::Png => {
            let decoder = PngDecoder::with_limits(Cursor::new(bytes), Limits::no_limits())
                .map_err(|e| fail(format!("bad PNG header: {e}")))?;
            check(decoder.dimensions())?;
            let mut decoder = decoder;
            decoder.set_limits(alloc).map_err(|e| fail(e.to_string()))?;
            DynamicImage::from_decoder(decoder).map_err(|e| fail(format!("bad PNG data: {e}")))?
        }
        ImageFormat::Jpeg => {
            let mut decoder = JpegDecoder::new(Cursor::new(bytes))
                .map_err(|e| fail(format!("bad JPEG header: {e}")))?;
            check(decoder.dimensions())?;
            // The JPEG decoder `image` uses is lenient and fills missing scan data with grey;
            // PIL refuses such files ("image file is truncated"), so refuse them here too.
            jpeg_complete(bytes).map_err(|r| fail(r.into()))?;
            decoder.set_limits(alloc).map_err(|e| fail(e.to_string()))?;
            DynamicImage::from_decoder(decoder).map_err(|e| fail(format!("bad JPEG data: {e}")))?
        }
        other => {
            return Err(fail(format!(
                "{other:?} images are not supported (PNG and JPEG only)"
            )));
        }
    };
    to_rgb_like_pil(decoded).map_err(fail)
}

/// Whether the last scan is followed by an end-of-image marker. Inside entropy-coded data a
/// 0xFF byte is always followed by 0x00 or a restart marker, so a byte pair FF DA can only be
/// a start-of-scan marker (or part of an embedded thumbnail, which precedes the main scans).
fn jpeg_complete(bytes: &[u8]) -> Result<(), &'static str> {
    let last_sos = bytes
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .ok_or("no scan data (start-of-scan marker missing)")?;
    if bytes[last_sos..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err("the file is truncated (no end-of-image marker after the last scan)")
    }
}

fn to_rgb_like_pil(img: DynamicImage) -> Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let rgb: Vec<u8> = match img {
        DynamicImage::ImageRgb8(rgb) => return Ok(rgb),
        DynamicImage::ImageLuma8(i) => i.as_raw().iter().flat_map(|&g| [g, g, g]).collect(),
        DynamicImage::ImageLumaA8(i) => i
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        DynamicImage::ImageRgba8(i) => i
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        // PIL reads 16-bit PNG samples with the raw modes `RGB;16B`/`RGBA;16B`, which keep the
        // high byte (truncation, not rounding); grey+alpha opens as RGBA the same way.
        DynamicImage::ImageRgb16(i) => i.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(i) => i
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        DynamicImage::ImageLumaA16(i) => i
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let g = (p[0] >> 8) as u8;
                [g, g, g]
            })
            .collect(),
        // PIL opens 16-bit grey as `I;16`, and its conversion to RGB clamps at 255 instead of
        // scaling; reproduced because that is what the reference pipeline feeds the model.
        DynamicImage::ImageLuma16(i) => i
            .as_raw()
            .iter()
            .flat_map(|&v| {
                let g = v.min(255) as u8;
                [g, g, g]
            })
            .collect(),
        other => return Err(format!("unsupported pixel format {:?}", other.color())),
    };
    RgbImage::from_raw(w, h, rgb).ok_or_else(|| "decoded buffer has the wrong size".to_string())
}

// ---------------------------------------------------------------------------------------------
// Pillow's bicubic resampler
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point weights for output indices `first..first + count` of a resize from `in_size`
/// to `out_size` (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, same expressions in
/// the same order so the doubles round identically).
struct Taps {
    /// First input index and number of taps, per output index.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: u32, out_size: u32, first: u32, count: u32) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(count as usize);
        let mut weights = vec![0i32; ksize * count as usize];
        let mut k = vec![0f64; ksize];
        for (o, xx) in (first..first + count).enumerate() {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[o * ksize..o * ksize + n];
            for (dst, &kx) in row.iter_mut().zip(&k[..n]) {
                let kx = if ww != 0.0 { kx / ww } else { kx };
                let scaled = kx * f64::from(1u32 << PRECISION_BITS);
                *dst = if kx < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, n));
        }
        Self {
            bounds,
            ksize,
            weights,
        }
    }

    fn get(&self, o: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[o];
        (start, &self.weights[o * self.ksize..o * self.ksize + n])
    }
}

#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// Horizontal weights laid out for a fixed-length inner loop: every output pixel reads exactly
/// `k` input pixels from `starts[o]`, the weights shifted inside a zero-padded window of `k`
/// (windows near the right edge start earlier). The zeros add nothing, so the sums are
/// Pillow's; the constant trip count lets the compiler unroll and drop bounds checks, which
/// roughly halves the cost of this pass.
struct HorizontalPlan {
    k: usize,
    starts: Vec<usize>,
    weights: Vec<i32>,
    /// Input column of `row[0]`, for the fallback loop (`k == 0`, more taps than planned).
    shift: usize,
}

impl HorizontalPlan {
    /// For rows whose first pixel is input column `shift` and that hold `len` pixels.
    fn new(taps: &Taps, shift: usize, len: usize) -> Self {
        let kmax = taps.bounds.iter().map(|b| b.1).max().unwrap_or(0);
        let Some(k) = [4, 5, 6, 7, 8, 9, 10, 12, 16, 20, 24, 32, 40, 48, 64]
            .into_iter()
            .find(|&k| k >= kmax && k <= len)
        else {
            return Self {
                k: 0,
                starts: Vec::new(),
                weights: Vec::new(),
                shift,
            };
        };
        let mut starts = Vec::with_capacity(taps.bounds.len());
        let mut weights = vec![0i32; k * taps.bounds.len()];
        for (o, window) in weights.chunks_exact_mut(k).enumerate() {
            let (start, w) = taps.get(o);
            let start = start - shift;
            let first = start.min(len - k);
            let off = start - first;
            window[off..off + w.len()].copy_from_slice(w);
            starts.push(first);
        }
        Self {
            k,
            starts,
            weights,
            shift,
        }
    }

    /// One output row (`out.len() / 3` pixels) from one input row.
    fn run(&self, row: &[u8], taps: &Taps, out: &mut [u8]) {
        match self.k {
            4 => self.fixed::<4>(row, out),
            5 => self.fixed::<5>(row, out),
            6 => self.fixed::<6>(row, out),
            7 => self.fixed::<7>(row, out),
            8 => self.fixed::<8>(row, out),
            9 => self.fixed::<9>(row, out),
            10 => self.fixed::<10>(row, out),
            12 => self.fixed::<12>(row, out),
            16 => self.fixed::<16>(row, out),
            20 => self.fixed::<20>(row, out),
            24 => self.fixed::<24>(row, out),
            32 => self.fixed::<32>(row, out),
            40 => self.fixed::<40>(row, out),
            48 => self.fixed::<48>(row, out),
            64 => self.fixed::<64>(row, out),
            _ => h_row(row, taps, self.shift, out),
        }
    }

    fn fixed<const K: usize>(&self, row: &[u8], out: &mut [u8]) {
        let half = 1i32 << (PRECISION_BITS - 1);
        let pixels = out.chunks_exact_mut(3);
        for ((out_px, &start), w) in pixels.zip(&self.starts).zip(self.weights.chunks_exact(K)) {
            let src = &row[start * 3..start * 3 + 3 * K];
            let (mut r, mut g, mut b) = (half, half, half);
            for i in 0..K {
                r += i32::from(src[3 * i]) * w[i];
                g += i32::from(src[3 * i + 1]) * w[i];
                b += i32::from(src[3 * i + 2]) * w[i];
            }
            out_px[0] = clip8(r);
            out_px[1] = clip8(g);
            out_px[2] = clip8(b);
        }
    }
}

/// One output row of a horizontal pass: `row` starts at input column `shift`.
fn h_row(row: &[u8], taps: &Taps, shift: usize, out: &mut [u8]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for (o, out_px) in out.chunks_exact_mut(3).enumerate() {
        let (start, k) = taps.get(o);
        let (mut r, mut g, mut b) = (half, half, half);
        for (px, &c) in row[(start - shift) * 3..].chunks_exact(3).zip(k) {
            r += i32::from(px[0]) * c;
            g += i32::from(px[1]) * c;
            b += i32::from(px[2]) * c;
        }
        out_px[0] = clip8(r);
        out_px[1] = clip8(g);
        out_px[2] = clip8(b);
    }
}

/// One output row of a vertical pass over rows `start..start + k.len()`; the loop runs along
/// the row so it vectorises.
#[inline]
fn v_row<'a>(
    rows: impl Fn(usize) -> &'a [u8],
    start: usize,
    k: &[i32],
    acc: &mut [i32],
    out: &mut [u8],
) {
    acc.fill(1 << (PRECISION_BITS - 1));
    for (i, &c) in k.iter().enumerate() {
        for (a, &v) in acc.iter_mut().zip(rows(start + i)) {
            *a += i32::from(v) * c;
        }
    }
    for (dst, &a) in out.iter_mut().zip(acc.iter()) {
        *dst = clip8(a);
    }
}

/// Pillow's `img.crop(src).resize((out_w, out_h), BICUBIC)`, computing only the output pixels
/// inside `win` and handing them to `emit` one row at a time (row index within `win`, RGB
/// bytes). Like Pillow, an axis whose size does not change is copied, not filtered.
fn resample(
    img: &RgbImage,
    src: Rect,
    out_w: u32,
    out_h: u32,
    win: Rect,
    mut emit: impl FnMut(usize, &[u8]),
) {
    debug_assert!(src.x + src.w <= img.width() && src.y + src.h <= img.height());
    debug_assert!(win.x + win.w <= out_w && win.y + win.h <= out_h);
    let stride = img.width() as usize * 3;
    let data = img.as_raw().as_slice();
    // `len` pixels of row `y`, from column `x`, both relative to `src`.
    let src_row = |y: usize, x: usize, len: usize| {
        let s = (src.y as usize + y) * stride + (src.x as usize + x) * 3;
        &data[s..s + len * 3]
    };
    let row_len = win.w as usize * 3;
    let need_h = out_w != src.w;
    let need_v = out_h != src.h;
    let hor = need_h.then(|| Taps::new(src.w, out_w, win.x, win.w));
    let vert = need_v.then(|| Taps::new(src.h, out_h, win.y, win.h));
    let mut out = vec![0u8; row_len];

    // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
    // by more than twice as many pixels as the width; the order changes the u8 rounding in
    // between, so it is followed exactly. Earlier Pillows always went horizontal first.
    let shrink_h = i64::from(src.h) - i64::from(out_h);
    let shrink_w = i64::from(src.w) - i64::from(out_w);
    if let (Some(hor), Some(vert), true) = (&hor, &vert, shrink_h > 0 && shrink_h > 2 * shrink_w) {
        // Vertical first, streaming: each output row needs one vertically filtered row of the
        // input columns the horizontal window reads.
        let (x_first, _) = hor.bounds[0];
        let (last_start, last_n) = hor.bounds[hor.bounds.len() - 1];
        let cols = last_start + last_n - x_first;
        let plan = HorizontalPlan::new(hor, x_first, cols);
        let mut acc = vec![0i32; cols * 3];
        let mut mid = vec![0u8; cols * 3];
        for o in 0..win.h as usize {
            let (start, k) = vert.get(o);
            v_row(|y| src_row(y, x_first, cols), start, k, &mut acc, &mut mid);
            plan.run(&mid, hor, &mut out);
            emit(o, &out);
        }
        return;
    }

    // Horizontal first: filter the input rows the vertical pass reads, then the vertical pass.
    let (y_first, y_last) = match &vert {
        Some(t) => {
            let (first, _) = t.bounds[0];
            let (start, n) = t.bounds[t.bounds.len() - 1];
            (first, start + n)
        }
        None => (win.y as usize, (win.y + win.h) as usize),
    };
    let horiz_buf = hor.as_ref().map(|taps| {
        let plan = HorizontalPlan::new(taps, 0, src.w as usize);
        let mut buf = vec![0u8; row_len * (y_last - y_first)];
        for (y, out_row) in (y_first..y_last).zip(buf.chunks_exact_mut(row_len)) {
            plan.run(src_row(y, 0, src.w as usize), taps, out_row);
        }
        buf
    });
    let mid_row = |y: usize| match &horiz_buf {
        Some(buf) => &buf[(y - y_first) * row_len..(y - y_first + 1) * row_len],
        None => src_row(y, win.x as usize, win.w as usize),
    };
    match &vert {
        None => {
            for (o, y) in (y_first..y_last).enumerate() {
                emit(o, mid_row(y));
            }
        }
        Some(taps) => {
            let mut acc = vec![0i32; row_len];
            for o in 0..win.h as usize {
                let (start, k) = taps.get(o);
                v_row(mid_row, start, k, &mut acc, &mut out);
                emit(o, &out);
            }
        }
    }
}

fn collect(w: u32, h: u32, run: impl FnOnce(&mut dyn FnMut(usize, &[u8]))) -> RgbImage {
    let row_len = w as usize * 3;
    let mut buf = vec![0u8; row_len * h as usize];
    run(&mut |y, row| buf[y * row_len..(y + 1) * row_len].copy_from_slice(row));
    RgbImage::from_raw(w, h, buf).unwrap_or_else(|| unreachable!("buffer sized for {w}x{h}"))
}

/// Pillow's `img.resize((width, height), Image.BICUBIC)`, bit for bit.
///
/// # Panics
/// If any of the four sizes is zero.
pub fn resize_to(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0 && img.width() > 0 && img.height() > 0);
    let src = Rect {
        x: 0,
        y: 0,
        w: img.width(),
        h: img.height(),
    };
    let win = Rect {
        x: 0,
        y: 0,
        w: width,
        h: height,
    };
    collect(width, height, |emit| {
        resample(img, src, width, height, win, emit)
    })
}

/// torchvision's output size for `Resize(size)` (an int): shorter side = `size`, longer side
/// `int(size * long / short)`.
pub fn shorter_side_dims(width: u32, height: u32, size: u32) -> (u32, u32) {
    let long_of =
        |long: u32, short: u32| (u64::from(size) * u64::from(long) / u64::from(short)) as u32;
    if width <= height {
        (size, long_of(height, width))
    } else {
        (long_of(width, height), size)
    }
}

/// torchvision `Resize(size, InterpolationMode.BICUBIC)` on a PIL image.
pub fn resize_shorter_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_dims(img.width(), img.height(), size);
    resize_to(img, w, h)
}

/// torchvision's centre-crop offset: `int(round((len - crop) / 2.0))`, rounding half to even.
fn center_offset(len: u32, crop: u32) -> u32 {
    (f64::from(len - crop) / 2.0).round_ties_even() as u32
}

/// torchvision `CenterCrop(size)`: zero padding first (left/top get the smaller half) when the
/// image is smaller than `size`, then offsets `round((h - size) / 2)` with Python's rounding.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let pad = |len: u32| if size > len { (size - len) / 2 } else { 0 };
    let (pad_left, pad_top) = (pad(w), pad(h));
    let (padded_w, padded_h) = (w.max(size), h.max(size));
    let (left, top) = (center_offset(padded_w, size), center_offset(padded_h, size));
    let mut out = RgbImage::new(size, size);
    for y in 0..size {
        let Some(sy) = (y + top).checked_sub(pad_top).filter(|&sy| sy < h) else {
            continue;
        };
        for x in 0..size {
            if let Some(sx) = (x + left).checked_sub(pad_left).filter(|&sx| sx < w) {
                out.put_pixel(x, y, *img.get_pixel(sx, sy));
            }
        }
    }
    out
}

/// torchvision `F.resized_crop(img, top, left, height, width, [size, size], BICUBIC)` on a PIL
/// image: `img.crop(...)` then Pillow's bicubic resize.
///
/// # Panics
/// If the box is empty or leaves the image, or `size` is zero.
pub fn resized_crop(
    img: &RgbImage,
    top: u32,
    left: u32,
    height: u32,
    width: u32,
    size: u32,
) -> RgbImage {
    assert!(
        width > 0 && height > 0 && size > 0,
        "empty crop {width}x{height} or size {size}"
    );
    assert!(
        left + width <= img.width() && top + height <= img.height(),
        "crop box ({left}, {top}, {width}x{height}) leaves the {}x{} image",
        img.width(),
        img.height()
    );
    let src = Rect {
        x: left,
        y: top,
        w: width,
        h: height,
    };
    let win = Rect {
        x: 0,
        y: 0,
        w: size,
        h: size,
    };
    collect(size, size, |emit| resample(img, src, size, size, win, emit))
}

fn normalize_lut() -> &'static [[f32; 256]; 3] {
    static LUT: OnceLock<[[f32; 256]; 3]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                // The same f32 operations as ToTensor (`/ 255`) then Normalize (`- mean`, `/ std`).
                *out = (v as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
        lut
    })
}

/// Writes `img` as `[3, h, w]` planes of `(x / 255 - mean) / std` (ToTensor + Normalize).
///
/// # Panics
/// If `out.len() != 3 * w * h`.
pub fn write_normalized_chw(img: &RgbImage, out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer length");
    let lut = normalize_lut();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
}

/// Writes one RGB row into row `y` of the three `size × size` planes in `out`, mirrored if
/// `flip`.
fn write_row(out: &mut [f32], size: usize, y: usize, row: &[u8], flip: bool) {
    let lut = normalize_lut();
    let plane = size * size;
    for c in 0..3 {
        let dst = &mut out[c * plane + y * size..c * plane + (y + 1) * size];
        let src = row.chunks_exact(3).map(|px| lut[c][px[c] as usize]);
        if flip {
            for (d, s) in dst.iter_mut().rev().zip(src) {
                *d = s;
            }
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s;
            }
        }
    }
}

/// CLIP's evaluation transform: Resize(size, BICUBIC) + CenterCrop(size) + ToTensor +
/// Normalize, after removing `border_crop` pixels from each side (ObjectNet's optional 2-pixel
/// border; 0 = off; skipped if it would leave nothing).
#[derive(Clone, Debug)]
pub struct EvalTransform {
    pub size: u32,
    pub border_crop: u32,
}

impl EvalTransform {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            border_crop: 0,
        }
    }

    /// The source rectangle after the border crop and the centre-crop window in the resized
    /// image (whose size is the last two values).
    fn geometry(&self, width: u32, height: u32) -> (Rect, Rect, u32, u32) {
        let b = self.border_crop;
        let src = if b > 0 && width > 2 * b && height > 2 * b {
            Rect {
                x: b,
                y: b,
                w: width - 2 * b,
                h: height - 2 * b,
            }
        } else {
            Rect {
                x: 0,
                y: 0,
                w: width,
                h: height,
            }
        };
        let (rw, rh) = shorter_side_dims(src.w, src.h, self.size);
        // The resized image is at least `size` on both sides, so CenterCrop never pads here.
        let win = Rect {
            x: center_offset(rw, self.size),
            y: center_offset(rh, self.size),
            w: self.size,
            h: self.size,
        };
        (src, win, rw, rh)
    }
}

/// torchvision `RandomResizedCrop(size, scale, ratio, BICUBIC)`, then a horizontal flip with
/// probability 0.5 if `hflip`, then `RandAugment` if set. Randomness comes from the seed
/// passed to [`Transform::apply`].
#[derive(Clone, Debug)]
pub struct TrainTransform {
    pub size: u32,
    pub scale: (f32, f32),
    pub ratio: (f32, f32),
    pub hflip: bool,
    pub randaugment: Option<RandAugment>,
}

impl TrainTransform {
    /// The crop box `(top, left, height, width)` torchvision's `RandomResizedCrop.get_params`
    /// would pick, drawing from `rng`.
    fn crop_box(&self, width: u32, height: u32, rng: &mut SplitMix64) -> (u32, u32, u32, u32) {
        let area = f64::from(width) * f64::from(height);
        let (s0, s1) = (f64::from(self.scale.0), f64::from(self.scale.1));
        let (lr0, lr1) = (f64::from(self.ratio.0).ln(), f64::from(self.ratio.1).ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(s0, s1);
            let aspect = rng.uniform(lr0, lr1).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                let top = rng.below(u64::from(height - h) + 1) as u32;
                let left = rng.below(u64::from(width - w) + 1) as u32;
                return (top, left, h, w);
            }
        }
        // Fallback: the central crop, clamped to the ratio range.
        let in_ratio = f64::from(width) / f64::from(height);
        let (rmin, rmax) = (
            f64::from(self.ratio.0.min(self.ratio.1)),
            f64::from(self.ratio.0.max(self.ratio.1)),
        );
        let (w, h) = if in_ratio < rmin {
            (
                width,
                ((f64::from(width) / rmin).round_ties_even() as u32).clamp(1, height),
            )
        } else if in_ratio > rmax {
            (
                ((f64::from(height) * rmax).round_ties_even() as u32).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }
}

/// An image transform producing one `[3, size, size]` normalised tensor.
#[derive(Clone, Debug)]
pub enum Transform {
    Eval(EvalTransform),
    Train(TrainTransform),
}

impl Transform {
    pub fn size(&self) -> u32 {
        match self {
            Transform::Eval(t) => t.size,
            Transform::Train(t) => t.size,
        }
    }

    /// Transforms `img` into `out` (`3 * size * size` floats, planes R, G, B). `Eval` ignores
    /// `seed`; `Train` is fully determined by it.
    ///
    /// # Panics
    /// If `out.len() != 3 * size * size` or the image is empty.
    pub fn apply(&self, img: &RgbImage, seed: u64, out: &mut [f32]) {
        let size = self.size();
        let s = size as usize;
        assert_eq!(out.len(), 3 * s * s, "output buffer length for size {size}");
        assert!(img.width() > 0 && img.height() > 0, "empty image");
        match self {
            Transform::Eval(t) => {
                let (src, win, rw, rh) = t.geometry(img.width(), img.height());
                resample(img, src, rw, rh, win, |y, row| {
                    write_row(out, s, y, row, false)
                });
            }
            Transform::Train(t) => {
                let mut rng = SplitMix64(seed);
                let (top, left, h, w) = t.crop_box(img.width(), img.height(), &mut rng);
                let flip = t.hflip && rng.next_f64() < 0.5;
                let src = Rect {
                    x: left,
                    y: top,
                    w,
                    h,
                };
                let win = Rect {
                    x: 0,
                    y: 0,
                    w: size,
                    h: size,
                };
                let Some(ra) = &t.randaugment else {
                    resample(img, src, size, size, win, |y, row| {
                        write_row(out, s, y, row, flip)
                    });
                    return;
                };
                // RandAugment works on the cropped 8-bit image (after the flip, as in
                // torchvision's pipeline), so the crop is materialised here; its draws come
                // after the crop's and the flip's, which keeps those unchanged.
                let mut crop =
                    collect(size, size, |emit| resample(img, src, size, size, win, emit));
                if flip {
                    image::imageops::flip_horizontal_in_place(&mut crop);
                }
                write_normalized_chw(&ra.apply(&crop, &mut rng), out);
            }
        }
    }
}

/// The seed for one sample's augmentation: a well-mixed function of the run seed, the epoch
/// and the sample's index, so a sample's crop does not depend on which thread decodes it.
pub fn sample_seed(run_seed: u64, epoch: u64, sample_index: u64) -> u64 {
    let mut h = mix64(run_seed ^ 0x243F_6A88_85A3_08D3);
    h = mix64(h ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    mix64(h ^ sample_index.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_offsets_round_half_to_even() {
        // Python: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
        assert_eq!(center_offset(225, 224), 0);
        assert_eq!(center_offset(227, 224), 2);
        assert_eq!(center_offset(229, 224), 2);
        assert_eq!(center_offset(231, 224), 4);
        assert_eq!(center_offset(326, 224), 51);
    }

    #[test]
    fn shorter_side_truncates() {
        assert_eq!(shorter_side_dims(655, 450, 224), (326, 224));
        assert_eq!(shorter_side_dims(450, 655, 224), (224, 326));
        assert_eq!(shorter_side_dims(500, 375, 224), (298, 224));
        assert_eq!(shorter_side_dims(1, 1, 224), (224, 224));
        assert_eq!(shorter_side_dims(3, 1, 224), (672, 224));
    }

    #[test]
    fn identity_weights_are_exact() {
        let t = Taps::new(10, 10, 0, 10);
        for o in 0..10 {
            let (start, k) = t.get(o);
            let one = k
                .iter()
                .enumerate()
                .find(|&(_, w)| *w != 0)
                .map(|(i, &w)| (start + i, w));
            assert_eq!(one, Some((o, 1 << PRECISION_BITS)));
        }
    }

    #[test]
    fn eval_crop_window_matches_full_resize_then_crop() {
        // Landscape, portrait, and taller than 2:1 (Pillow 13 filters vertically first there).
        for (w, h) in [(61, 43), (43, 61), (20, 90), (90, 20)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (x * y) as u8, (y * 13) as u8])
            });
            for size in [8, 17, 32, 50] {
                let t = EvalTransform::new(size);
                let (src, win, rw, rh) = t.geometry(img.width(), img.height());
                let windowed = collect(size, size, |emit| resample(&img, src, rw, rh, win, emit));
                let full = center_crop(&resize_shorter_side(&img, size), size);
                assert_eq!(windowed, full, "{w}x{h} size {size}");
            }
        }
    }

    /// Property check over many seeds: the box lies inside the image, and (away from the
    /// rounding of small images) its area fraction and aspect ratio lie in the requested ranges.
    #[test]
    fn random_resized_crop_boxes_are_in_bounds_and_in_range() {
        let configs = [
            ((0.08f32, 1.0f32), (0.75f32, 4.0 / 3.0)),
            ((0.9, 1.0), (0.75, 4.0 / 3.0)),
        ];
        let sizes = [
            (500u32, 375u32),
            (375, 500),
            (224, 224),
            (1, 1),
            (3000, 20),
            (20, 3000),
            (7, 5),
        ];
        for (scale, ratio) in configs {
            let t = TrainTransform {
                size: 224,
                scale,
                ratio,
                hflip: true,
                randaugment: None,
            };
            for (w, h) in sizes {
                let mut areas = (f64::MAX, 0f64);
                for i in 0..3000 {
                    let mut rng = SplitMix64(sample_seed(11, 3, i));
                    let (top, left, ch, cw) = t.crop_box(w, h, &mut rng);
                    assert!(ch >= 1 && cw >= 1, "{w}x{h}: empty box");
                    assert!(
                        left + cw <= w && top + ch <= h,
                        "{w}x{h}: box leaves the image"
                    );
                    if w >= 224 && h >= 224 {
                        let frac = f64::from(cw * ch) / f64::from(w * h);
                        let r = f64::from(cw) / f64::from(ch);
                        areas = (areas.0.min(frac), areas.1.max(frac));
                        assert!(
                            frac >= f64::from(scale.0) - 0.01 && frac <= f64::from(scale.1) + 0.01,
                            "{w}x{h}: area fraction {frac}"
                        );
                        assert!(
                            r >= f64::from(ratio.0) * 0.98 && r <= f64::from(ratio.1) * 1.02,
                            "{w}x{h}: ratio {r}"
                        );
                    }
                }
                if w >= 224 && h >= 224 && scale.0 < 0.5 {
                    // The draws cover the range, not just one corner of it.
                    assert!(areas.0 < 0.15 && areas.1 > 0.9, "{w}x{h}: areas {areas:?}");
                }
            }
        }
    }

    #[test]
    fn random_resized_crop_positions_vary() {
        let t = TrainTransform {
            size: 224,
            scale: (0.08, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            hflip: true,
            randaugment: None,
        };
        let boxes: std::collections::HashSet<_> = (0..200)
            .map(|i| t.crop_box(500, 375, &mut SplitMix64(sample_seed(0, 0, i))))
            .collect();
        assert!(boxes.len() > 190, "only {} distinct boxes", boxes.len());
    }

    /// With no ops, the RandAugment path (crop materialised, flipped as bytes, normalised
    /// afterwards) gives the streaming path's output, so it draws the same crop and flip.
    #[test]
    fn randaugment_with_no_ops_matches_the_plain_train_path() {
        let img = RgbImage::from_fn(50, 37, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
        });
        let plain = TrainTransform {
            size: 24,
            scale: (0.08, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            hflip: true,
            randaugment: None,
        };
        let zero_ops = TrainTransform {
            randaugment: Some(RandAugment::new(0, 9)),
            ..plain.clone()
        };
        let (plain, zero_ops) = (Transform::Train(plain), Transform::Train(zero_ops));
        for seed in 0..40 {
            let mut a = vec![0f32; 3 * 24 * 24];
            let mut b = vec![0f32; 3 * 24 * 24];
            plain.apply(&img, sample_seed(1, 0, seed), &mut a);
            zero_ops.apply(&img, sample_seed(1, 0, seed), &mut b);
            assert_eq!(a, b, "seed {seed}");
        }
    }

    #[test]
    fn normalisation_lut_matches_constants() {
        let lut = normalize_lut();
        assert_eq!(lut[0][0], (0.0 - CLIP_MEAN[0]) / CLIP_STD[0]);
        assert_eq!(lut[2][255], (1.0 - CLIP_MEAN[2]) / CLIP_STD[2]);
    }

    #[test]
    fn sample_seeds_differ() {
        let a = sample_seed(0, 0, 0);
        assert_ne!(a, sample_seed(0, 0, 1));
        assert_ne!(a, sample_seed(0, 1, 0));
        assert_ne!(a, sample_seed(1, 0, 0));
        assert_ne!(sample_seed(0, 1, 0), sample_seed(0, 0, 1));
    }
}
