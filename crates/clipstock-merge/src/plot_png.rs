//! The figure of [`crate::ratio_plot_svg`] as a PNG, for viewers, notebooks and issue trackers
//! that do not render SVG. It is rasterised here into an RGB buffer and only the encoding is
//! left to the `png` crate: a plotting or font-rendering stack would be most of this crate's
//! build time for one figure. Text uses the 5×7 bitmap font (with descenders) at the end of this
//! file.

use crate::plot::{Point, angle_range, points, t_range};
use crate::report::MergeReport;

/// Image size in pixels.
pub(crate) const WIDTH: usize = 1200;
pub(crate) const HEIGHT: usize = 700;

const LEFT: usize = 100;
const RIGHT: usize = 24;
const TOP: usize = 64;
const PANEL_H: usize = 248;
const GAP: usize = 60;
/// Vertical margin between a panel's frame and its value range.
const PAD: usize = 8;
/// Text is drawn at twice the font's size: 10×16-pixel cells, readable at 1200×700.
const TEXT: usize = 2;

type Rgb = [u8; 3];
const BACKGROUND: Rgb = [255, 255, 255];
const INK: Rgb = [34, 34, 34];
const FRAME: Rgb = [136, 136, 136];
const GRID: Rgb = [232, 232, 232];
/// The SVG's colours (matplotlib's first two), so both files of one run look alike.
pub(crate) const MATRIX_RGB: Rgb = [31, 119, 180];
pub(crate) const VECTOR_RGB: Rgb = [255, 127, 14];

/// PNG bytes of the per-tensor figure: the angle between the fine-tuned deltas (degrees, top
/// panel) and the ratio t (bottom panel) for every tensor with a ratio, in model order; matrices
/// are blue discs, vectors (biases, LayerNorms) orange diamonds. A report without ratios (not a
/// Model Stock merge) gives the empty axes and a note saying so.
pub fn ratio_plot_png(report: &MergeReport) -> Vec<u8> {
    let canvas = draw(report);
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Flat areas and a few colours: even the fast mode keeps the file under 100 KB.
    enc.set_compression(png::Compression::Fast);
    let encoded = enc
        .write_header()
        .and_then(|mut w| w.write_image_data(&canvas.px).and_then(|()| w.finish()));
    // Encoding into a Vec can only fail on a buffer of the wrong size, and the canvas is
    // always WIDTH × HEIGHT × 3.
    encoded.expect("PNG encoding of a correctly sized in-memory image");
    out
}

fn draw(report: &MergeReport) -> Canvas {
    let points = points(report);
    let mut c = Canvas::new(WIDTH, HEIGHT, BACKGROUND);
    let plot_w = WIDTH - LEFT - RIGHT;
    let n = points.len().max(1);
    let x_of = |i: usize| LEFT as f64 + plot_w as f64 * (i as f64 + 0.5) / n as f64;

    let title = format!(
        "{}: per-tensor angle and ratio t ({} tensors with a ratio)",
        report.summary.method,
        points.len()
    );
    c.text(20, 10, &title, TEXT, INK);
    legend(&mut c);

    let x_ticks = if points.is_empty() {
        Vec::new()
    } else {
        ticks(0.0, (points.len() - 1) as f64, 12, &[1.0, 2.0, 5.0], 1.0).1
    };
    let panels = [
        Panel {
            label: "angle (°)",
            range: angle_range(&points),
            // Degrees read best in multiples of 15.
            steps: &[1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 90.0],
            value: |p| p.angle,
        },
        Panel {
            label: "ratio t",
            range: t_range(&points),
            steps: &[1.0, 2.0, 2.5, 5.0],
            value: |p| p.t,
        },
    ];
    for (k, panel) in panels.into_iter().enumerate() {
        let Panel {
            label,
            range: (lo, hi),
            steps,
            value,
        } = panel;
        let y0 = TOP + k * (PANEL_H + GAP);
        let y1 = y0 + PANEL_H;
        // Inset from the frame so that markers at the extremes are drawn whole.
        let inner = (PANEL_H - 2 * PAD) as f64;
        let y_of = |v: f64| (y1 - PAD) as f64 - inner * (v - lo) / (hi - lo).max(1e-12);
        let (step, values) = ticks(lo, hi, 7, steps, 0.0);
        for v in values {
            let y = y_of(v).round() as i64;
            c.hline(LEFT as i64, (LEFT + plot_w) as i64, y, GRID);
            c.hline(LEFT as i64 - 5, LEFT as i64 - 1, y, FRAME);
            let s = tick_label(v, step);
            let w = text_width(&s, TEXT) as i64;
            c.text(
                LEFT as i64 - 10 - w,
                y - (7 * TEXT / 2) as i64,
                &s,
                TEXT,
                INK,
            );
        }
        for &i in &x_ticks {
            let x = x_of(i as usize).round() as i64;
            c.vline(x, y1 as i64 + 1, y1 as i64 + 5, FRAME);
        }
        c.frame(LEFT, y0, plot_w, PANEL_H, FRAME);
        let lw = text_width(label, TEXT) as i64;
        c.text_up(24, (y0 + PANEL_H / 2) as i64 + lw / 2, label, TEXT, INK);
        if points.is_empty() {
            let note = "no tensor has a ratio (only Model Stock merges have one)";
            let w = text_width(note, TEXT);
            c.text(
                (LEFT + (plot_w.saturating_sub(w)) / 2) as i64,
                (y0 + PANEL_H / 2 - 7) as i64,
                note,
                TEXT,
                FRAME,
            );
        }
        // Vectors after matrices: they are fewer and would otherwise vanish under the discs.
        for pass_matrix in [true, false] {
            for (i, p) in points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matrix == pass_matrix)
            {
                let (x, y) = (x_of(i), y_of(value(p)));
                if p.matrix {
                    c.disc(x, y, 3.5, MATRIX_RGB);
                } else {
                    c.diamond(x, y, 5.0, VECTOR_RGB);
                }
            }
        }
    }
    let bottom = TOP + 2 * PANEL_H + GAP;
    for &i in &x_ticks {
        let s = tick_label(i, 1.0);
        let w = text_width(&s, TEXT) as i64;
        let x = x_of(i as usize).round() as i64;
        c.text(x - w / 2, bottom as i64 + 10, &s, TEXT, INK);
    }
    let xl = "tensor index in model order";
    c.text(
        (LEFT + (plot_w - text_width(xl, TEXT)) / 2) as i64,
        bottom as i64 + 38,
        xl,
        TEXT,
        INK,
    );
    c
}

/// One of the two stacked panels.
struct Panel {
    label: &'static str,
    range: (f64, f64),
    /// Tick steps to choose from (times powers of ten).
    steps: &'static [f64],
    value: fn(&Point) -> f64,
}

/// The two marker kinds and what they stand for, right-aligned under the title (beside it
/// there is no room once a method name is long).
fn legend(c: &mut Canvas) {
    let items: [(&str, Rgb, bool); 2] = [
        ("matrix (weight)", MATRIX_RGB, true),
        ("vector (bias, LayerNorm)", VECTOR_RGB, false),
    ];
    let gap = 28;
    let total: usize = items
        .iter()
        .map(|(s, _, _)| 18 + text_width(s, TEXT) + gap)
        .sum::<usize>()
        - gap;
    let mut x = WIDTH - RIGHT - total;
    let y = 36;
    for (label, color, matrix) in items {
        let (cx, cy) = (x as f64 + 6.0, y as f64 + 7.0);
        if matrix {
            c.disc(cx, cy, 5.0, color);
        } else {
            c.diamond(cx, cy, 7.0, color);
        }
        c.text((x + 18) as i64, y as i64, label, TEXT, INK);
        x += 18 + text_width(label, TEXT) + gap;
    }
}

/// The tick step and tick values in `[lo, hi]`: multiples of the smallest `s × 10^k` (s from
/// `steps`, at least `min_step`) that gives at most `max_ticks` of them.
fn ticks(lo: f64, hi: f64, max_ticks: usize, steps: &[f64], min_step: f64) -> (f64, Vec<f64>) {
    let span = (hi - lo).max(1e-9);
    // A report read from JSON can hold any finite t, and ±1e308 overflows the span: no ticks
    // rather than a search for a step that never ends.
    if !span.is_finite() {
        return (1.0, Vec::new());
    }
    let step = tick_step(span, max_ticks, steps).max(min_step);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    if last.saturating_sub(first) > 2 * max_ticks as i64 {
        return (step, Vec::new());
    }
    (step, (first..=last).map(|k| k as f64 * step).collect())
}

fn tick_step(span: f64, max_ticks: usize, steps: &[f64]) -> f64 {
    let mut mag = 10f64.powf((span / max_ticks as f64).log10().floor() - 1.0);
    loop {
        for s in steps {
            let step = s * mag;
            if span / step + 1.0 <= max_ticks as f64 {
                return step;
            }
        }
        mag *= 10.0;
    }
}

/// A tick value with as many decimals as its step needs (0.25 → 2, 0.2 → 1, 15 → 0).
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize;
    let s = format!("{v:.decimals$}");
    // `-0.0` formats as "-0".
    if s.trim_start_matches('-')
        .chars()
        .all(|ch| ch == '0' || ch == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// An RGB8 image, row-major.
pub(crate) struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize, bg: Rgb) -> Canvas {
        Canvas {
            w,
            h,
            px: bg.repeat(w * h),
        }
    }

    /// Mixes `c` into pixel (x, y) with weight `alpha`; pixels outside the image are dropped.
    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h || alpha <= 0.0 {
            return;
        }
        let i = 3 * (y as usize * self.w + x as usize);
        for (p, v) in self.px[i..i + 3].iter_mut().zip(c) {
            *p = if alpha >= 1.0 {
                v
            } else {
                (f64::from(*p) * (1.0 - alpha) + f64::from(v) * alpha).round() as u8
            };
        }
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb) {
        self.blend(x, y, c, 1.0);
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Rgb) {
        for x in x0..=x1 {
            self.put(x, y, c);
        }
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            self.put(x, y, c);
        }
    }

    /// A one-pixel rectangle outline.
    fn frame(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgb) {
        let (x0, y0, x1, y1) = (x as i64, y as i64, (x + w) as i64, (y + h) as i64);
        self.hline(x0, x1, y0, c);
        self.hline(x0, x1, y1, c);
        self.vline(x0, y0, y1, c);
        self.vline(x1, y0, y1, c);
    }

    /// Fills the shape `inside(dx, dy)` (offsets from the centre, within `r`) with coverage
    /// estimated from 4×4 samples per pixel, so small markers keep round edges.
    fn shape(&mut self, cx: f64, cy: f64, r: f64, c: Rgb, inside: impl Fn(f64, f64) -> bool) {
        let (x0, x1) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
        let (y0, y1) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let mut hits = 0u32;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let px = x as f64 + (f64::from(sx) + 0.5) / 4.0;
                        let py = y as f64 + (f64::from(sy) + 0.5) / 4.0;
                        if inside(px - cx, py - cy) {
                            hits += 1;
                        }
                    }
                }
                self.blend(x, y, c, f64::from(hits) / 16.0);
            }
        }
    }

    fn disc(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        self.shape(cx, cy, r, c, |dx, dy| dx * dx + dy * dy <= r * r);
    }

    fn diamond(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        self.shape(cx, cy, r, c, |dx, dy| dx.abs() + dy.abs() <= r);
    }

    /// Left-to-right text with its top-left corner at (x, y), each font pixel `scale`² pixels.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: usize, c: Rgb) {
        self.glyphs(s, scale, c, |col, row| (x + col, y + row));
    }

    /// Text rotated a quarter turn counter-clockwise (read bottom to top), starting at
    /// (x, y_bottom) and growing upwards.
    fn text_up(&mut self, x: i64, y_bottom: i64, s: &str, scale: usize, c: Rgb) {
        self.glyphs(s, scale, c, |col, row| (x + row, y_bottom - col));
    }

    /// Draws the font pixels of `s`; `at` maps (column, row) in unrotated text pixels to the
    /// image.
    fn glyphs(&mut self, s: &str, scale: usize, c: Rgb, at: impl Fn(i64, i64) -> (i64, i64)) {
        let scale = scale as i64;
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5i64 {
                    if bits & (0b10000 >> col) == 0 {
                        continue;
                    }
                    let gx = (i as i64 * 6 + col) * scale;
                    let gy = r as i64 * scale;
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (x, y) = at(gx + dx, gy + dy);
                            self.put(x, y, c);
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `s` drawn at `scale` (glyphs are 5 wide with 1 pixel of spacing).
fn text_width(s: &str, scale: usize) -> usize {
    (s.chars().count() * 6).saturating_sub(1) * scale
}

/// The bitmap of `ch`: 5×7 above the baseline plus one descender row (g, j, p, q, y and the
/// comma would otherwise have to be squashed into the x-height and read as 9, ρ and so on),
/// one byte per row from the top, bit 4 the leftmost column. Characters outside the font are
/// drawn as `?`.
fn glyph(ch: char) -> [u8; 8] {
    FONT.iter()
        .find(|(c, _)| *c == ch)
        .or_else(|| FONT.iter().find(|(c, _)| *c == '?'))
        .map_or([0; 8], |(_, rows)| *rows)
}

/// Digits, both cases of the Latin alphabet and the punctuation the figure (and method names)
/// use; drawn for this crate.
#[rustfmt::skip]
const FONT: &[(char, [u8; 8])] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b01110, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000]),
    ('[', [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0b00000]),
    (']', [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000]),
    ('°', [0b01100, 0b10010, 0b10010, 0b01100, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('\'', [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MergeOptions, Method, TensorRef, merge_tensors};

    /// A small Model Stock report with both matrices and vectors, and one with no ratios.
    fn reports() -> (MergeReport, MergeReport) {
        let shapes: [(&str, Vec<usize>); 3] = [
            ("blocks.0.weight", vec![4, 8]),
            ("blocks.0.bias", vec![4]),
            ("blocks.1.weight", vec![8, 4]),
        ];
        let value = |m: usize, t: usize, k: usize| {
            let base = ((t * 31 + k * 7) % 13) as f32 / 13.0;
            let delta = if m == 0 {
                0.0
            } else {
                (((m * 17 + t * 5 + k * 3) % 11) as f32 - 5.0) / 50.0
            };
            base + delta
        };
        let data: Vec<Vec<Vec<f32>>> = (0..4)
            .map(|m| {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(t, (_, s))| (0..s.iter().product()).map(|k| value(m, t, k)).collect())
                    .collect()
            })
            .collect();
        let refs: Vec<Vec<TensorRef<'_>>> = data
            .iter()
            .map(|m| {
                shapes
                    .iter()
                    .zip(m)
                    .map(|((name, shape), d)| TensorRef {
                        name,
                        shape,
                        data: d,
                    })
                    .collect()
            })
            .collect();
        let models: Vec<&[TensorRef<'_>]> = refs[1..].iter().map(|m| m.as_slice()).collect();
        let (_, stock) =
            merge_tensors(Some(&refs[0]), &models, &MergeOptions::default()).expect("model stock");
        let (_, soup) = merge_tensors(None, &models, &MergeOptions::new(Method::UniformSoup))
            .expect("uniform soup");
        (stock, soup)
    }

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("PNG data");
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    fn count(px: &[u8], c: Rgb) -> usize {
        px.chunks_exact(3).filter(|p| *p == c).count()
    }

    #[test]
    fn decodes_to_the_figure_with_both_series() {
        let (stock, _) = reports();
        assert!(
            stock
                .tensors
                .iter()
                .all(|t| t.t.is_some() && t.angle_deg.is_some())
        );
        let (info, px) = decode(&ratio_plot_png(&stock));
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        // Two matrices and one vector in two panels, plus the legend's markers.
        let (blue, orange) = (count(&px, MATRIX_RGB), count(&px, VECTOR_RGB));
        assert!(blue > 5 * 20, "matrix markers: {blue} pixels");
        assert!(orange > 3 * 20, "vector markers: {orange} pixels");
        assert!(count(&px, INK) > 1000, "text and tick labels are drawn");
    }

    #[test]
    fn reports_without_ratios_give_empty_axes() {
        let (stock, soup) = reports();
        assert!(soup.tensors.iter().all(|t| t.angle_deg.is_none()));
        let mut empty = stock;
        empty.tensors.clear();
        for report in [soup, empty] {
            let (info, px) = decode(&ratio_plot_png(&report));
            assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
            // Only the legend's two markers carry the series colours.
            let legend_only = |c: Rgb| {
                px.chunks_exact(3)
                    .enumerate()
                    .filter(|(_, p)| *p == c)
                    .all(|(i, _)| i / WIDTH < TOP)
            };
            assert!(legend_only(MATRIX_RGB) && legend_only(VECTOR_RGB));
            assert!(count(&px, MATRIX_RGB) > 0);
        }
    }

    #[test]
    fn extreme_and_non_finite_ratios_stay_inside_the_image() {
        let (mut stock, _) = reports();
        stock.tensors[0].t = Some(-1e6);
        stock.tensors[1].t = Some(f64::NAN);
        stock.tensors[2].angle_deg = Some(f64::INFINITY);
        let (info, _) = decode(&ratio_plot_png(&stock));
        assert_eq!(info.width, WIDTH as u32);
        // Finite, but the range overflows: drawn without ticks, and it terminates.
        stock.tensors[1].t = Some(1e308);
        stock.tensors[0].t = Some(-1e308);
        stock.tensors[2].angle_deg = Some(1e300);
        let (info, _) = decode(&ratio_plot_png(&stock));
        assert_eq!(info.height, HEIGHT as u32);
    }

    #[test]
    fn ticks_are_round_numbers() {
        let t = [1.0, 2.0, 2.5, 5.0];
        let (step, values) = ticks(0.0, 1.0, 7, &t, 0.0);
        let labels: Vec<String> = values.iter().map(|v| tick_label(*v, step)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (step, values) = ticks(-0.3, 1.0, 7, &t, 0.0);
        assert_eq!(step, 0.25);
        assert_eq!(tick_label(values[0], step), "-0.25");
        let angle = ticks(
            0.0,
            90.0,
            7,
            &[1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 90.0],
            0.0,
        );
        assert_eq!(angle.1, vec![0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0]);
        assert_eq!(tick_label(-0.0, 1.0), "0");
        assert_eq!(ticks(0.0, 153.0, 12, &[1.0, 2.0, 5.0], 1.0).1.len(), 8);
        // One or a few tensors: whole indices only.
        assert_eq!(ticks(0.0, 0.0, 12, &[1.0, 2.0, 5.0], 1.0).1, vec![0.0]);
        assert_eq!(
            ticks(0.0, 2.0, 12, &[1.0, 2.0, 5.0], 1.0).1,
            vec![0.0, 1.0, 2.0]
        );
    }

    #[test]
    fn every_character_the_figure_uses_has_a_glyph() {
        let used = "model_stock uniform_soup wise_ft task_arithmetic: angle (°) ratio t per tensor \
                    with a ratio matrix (weight) vector (bias, LayerNorm) tensor index in model \
                    order no tensor has a ratio (only Model Stock merges have one) -0.123456789";
        for ch in used.chars() {
            assert!(FONT.iter().any(|(c, _)| *c == ch), "no glyph for {ch:?}");
        }
        let mut seen = std::collections::BTreeSet::new();
        assert!(
            FONT.iter().all(|(c, _)| seen.insert(*c)),
            "duplicate glyphs"
        );
    }
}
