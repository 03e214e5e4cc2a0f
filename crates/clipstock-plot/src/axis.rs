//! Linear scales and round tick values.

/// A linear map from a value range (the domain) onto a pixel range. A reversed pixel range
/// (`(bottom, top)`) gives the usual upward y axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    pub fn new((lo, hi): (f64, f64), (from, to): (f64, f64)) -> Scale {
        Scale { lo, hi, from, to }
    }

    pub fn domain(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }

    /// The pixel position of `v`. Computed on halves so that a finite domain as wide as
    /// ±1.7e308 does not overflow; non-finite for a non-finite `v` (drawing leaves those out).
    pub fn map(&self, v: f64) -> f64 {
        let span = (self.hi / 2.0 - self.lo / 2.0).max(1e-12);
        self.from + (self.to - self.from) * ((v / 2.0 - self.lo / 2.0) / span)
    }
}

/// How an axis chooses its ticks: at most `max` of them, a step of `s × 10^k` for some `s`
/// in `steps` and at least `min_step` (1 for indices, 0 for anything continuous).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickSpec {
    pub max: usize,
    pub steps: &'static [f64],
    pub min_step: f64,
}

impl TickSpec {
    /// Steps of 1, 2 or 5 × 10^k.
    pub const ROUND: &'static [f64] = &[1.0, 2.0, 5.0];

    /// Up to `max` ticks on round values.
    pub fn round(max: usize) -> TickSpec {
        TickSpec {
            max,
            steps: Self::ROUND,
            min_step: 0.0,
        }
    }

    /// The step and tick values for `[lo, hi]` (see [`ticks`]).
    pub fn ticks(&self, lo: f64, hi: f64) -> (f64, Vec<f64>) {
        ticks(lo, hi, self.max, self.steps, self.min_step)
    }
}

/// The tick step and tick values in `[lo, hi]`: multiples of the smallest `s × 10^k` (s from
/// `steps`, at least `min_step`) that gives at most `max_ticks` of them.
pub fn ticks(lo: f64, hi: f64, max_ticks: usize, steps: &[f64], min_step: f64) -> (f64, Vec<f64>) {
    let span = (hi - lo).max(1e-9);
    // Data can hold any finite value, and ±1e308 overflows the span: no ticks rather than a
    // search for a step that never ends.
    if !span.is_finite() || max_ticks == 0 || steps.is_empty() {
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
pub fn tick_label(v: f64, step: f64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    // Moved here from clipstock-merge's plot_png.rs with the ticks themselves.
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
    fn overflowing_or_degenerate_ranges_give_no_ticks() {
        assert!(ticks(-1e308, 1e308, 7, TickSpec::ROUND, 0.0).1.is_empty());
        assert!(ticks(0.0, 1.0, 0, TickSpec::ROUND, 0.0).1.is_empty());
        assert!(ticks(0.0, 1.0, 7, &[], 0.0).1.is_empty());
        assert_eq!(TickSpec::round(3).ticks(0.0, 10.0).1, vec![0.0, 5.0, 10.0]);
    }

    #[test]
    fn scales_map_linearly_and_survive_huge_domains() {
        let y = Scale::new((0.0, 1.0), (100.0, 0.0));
        assert_eq!(y.map(0.0), 100.0);
        assert_eq!(y.map(1.0), 0.0);
        assert_eq!(y.map(0.25), 75.0);
        let huge = Scale::new((-1e308, 1e308), (0.0, 10.0));
        assert_eq!(huge.map(1e308), 10.0);
        assert_eq!(huge.map(-1e308), 0.0);
        assert!(huge.map(f64::NAN).is_nan());
        // A single value: everything at the start rather than a division by zero.
        assert_eq!(Scale::new((3.0, 3.0), (0.0, 10.0)).map(3.0), 0.0);
    }
}
