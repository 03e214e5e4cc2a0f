//! A framed plot area with its scales, axes and series, and legends.

use crate::axis::{Scale, tick_label};
use crate::font::text_width;
use crate::svg::{Anchor, Marker, Rgb, Svg, TextStyle};
use crate::{FRAME, GRID, INK};

/// Length of tick marks outside the frame, and the gap between a mark and its label.
const TICK: f64 = 5.0;
const TICK_GAP: f64 = 5.0;

/// A rectangular plot area at (`x`, `y`) of `w` × `h` pixels. Values map into the area inset
/// by `pad` pixels, so markers at the extremes of the domain are drawn whole inside the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Panel {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub xs: Scale,
    pub ys: Scale,
}

impl Panel {
    /// `x_domain` runs left to right, `y_domain` bottom to top; `(pad_x, pad_y)` inset them.
    pub fn new(
        (x, y, w, h): (f64, f64, f64, f64),
        x_domain: (f64, f64),
        y_domain: (f64, f64),
        (pad_x, pad_y): (f64, f64),
    ) -> Panel {
        Panel {
            x,
            y,
            w,
            h,
            xs: Scale::new(x_domain, (x + pad_x, x + w - pad_x)),
            ys: Scale::new(y_domain, (y + h - pad_y, y + pad_y)),
        }
    }

    pub fn right(&self) -> f64 {
        self.x + self.w
    }

    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }

    /// The pixel position of a data point.
    pub fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (self.xs.map(x), self.ys.map(y))
    }

    /// The frame (drawn last of the axes so grid lines do not cover it).
    pub fn frame(&self, svg: &mut Svg) {
        svg.frame(self.x, self.y, self.w, self.h, FRAME);
    }

    /// Horizontal grid lines, tick marks and labels at `values` (labelled with as many
    /// decimals as `step` needs), and `label` read bottom to top, centred at `label_x`.
    pub fn y_axis(
        &self,
        svg: &mut Svg,
        (step, values): &(f64, Vec<f64>),
        label: &str,
        label_x: f64,
        size: f64,
    ) {
        for &v in values {
            let y = self.ys.map(v).round();
            svg.line((self.x, y), (self.right(), y), GRID, 1.0);
            svg.line((self.x - TICK, y), (self.x - 1.0, y), FRAME, 1.0);
            svg.text(
                self.x - TICK - TICK_GAP,
                y + 0.36 * size,
                &tick_label(v, *step),
                TextStyle::new(size, INK).anchor(Anchor::End),
            );
        }
        svg.text_up(
            label_x,
            self.y + self.h / 2.0,
            label,
            TextStyle::new(size, INK).anchor(Anchor::Middle),
        );
    }

    /// Tick marks below the frame at `values`, labelled when `labels` is set (stacked panels
    /// that share an x axis label only the lowest).
    pub fn x_axis(&self, svg: &mut Svg, (step, values): &(f64, Vec<f64>), labels: bool, size: f64) {
        for &v in values {
            let x = self.xs.map(v).round();
            svg.line(
                (x, self.bottom() + 1.0),
                (x, self.bottom() + TICK),
                FRAME,
                1.0,
            );
            if labels {
                svg.text(
                    x,
                    self.bottom() + TICK + TICK_GAP + 0.73 * size,
                    &tick_label(v, *step),
                    TextStyle::new(size, INK).anchor(Anchor::Middle),
                );
            }
        }
    }

    /// The x axis label, centred under the panel at baseline `y`.
    pub fn x_label(&self, svg: &mut Svg, label: &str, y: f64, size: f64) {
        svg.text(
            self.x + self.w / 2.0,
            y,
            label,
            TextStyle::new(size, INK).anchor(Anchor::Middle),
        );
    }

    /// A note centred in the panel (e.g. why it is empty).
    pub fn note(&self, svg: &mut Svg, text: &str, size: f64) {
        svg.text(
            self.x + self.w / 2.0,
            self.y + self.h / 2.0 + 0.36 * size,
            text,
            TextStyle::new(size, FRAME).anchor(Anchor::Middle),
        );
    }

    /// One marker per point, each with its tooltip when `tooltips` gives one; points with a
    /// non-finite coordinate are left out.
    pub fn scatter(
        &self,
        svg: &mut Svg,
        points: &[(f64, f64)],
        (marker, r, color): (Marker, f64, Rgb),
        tooltips: Option<&[String]>,
    ) {
        for (i, &(x, y)) in points.iter().enumerate() {
            let tip = tooltips.and_then(|t| t.get(i)).map(String::as_str);
            svg.marker(marker, self.at(x, y), r, color, tip);
        }
    }

    /// Markers with a text label to their right (e.g. one point per method in an accuracy
    /// scatter).
    pub fn labelled_points(
        &self,
        svg: &mut Svg,
        points: &[(f64, f64, &str)],
        (marker, r, color): (Marker, f64, Rgb),
        size: f64,
    ) {
        for &(x, y, label) in points {
            let (px, py) = self.at(x, y);
            svg.marker(marker, (px, py), r, color, Some(label));
            svg.text(
                px + r + 4.0,
                py + 0.36 * size,
                label,
                TextStyle::new(size, INK),
            );
        }
    }

    /// A line series through `points` in order (e.g. a training curve, a WiSE-FT sweep).
    pub fn line(&self, svg: &mut Svg, points: &[(f64, f64)], color: Rgb, width: f64) {
        let px: Vec<(f64, f64)> = points.iter().map(|&(x, y)| self.at(x, y)).collect();
        svg.polyline(&px, color, width);
    }
}

/// One legend entry: a marker or, with `marker: None`, a short line in `color`.
#[derive(Debug, Clone, PartialEq)]
pub struct LegendItem {
    pub label: String,
    pub color: Rgb,
    pub marker: Option<(Marker, f64)>,
}

/// The items in one row ending at `right`, centred on `y`, in `size` text. Widths come from
/// the vendored font, so the row ends where asked in the PNG (and close to it elsewhere).
pub fn legend(svg: &mut Svg, items: &[LegendItem], right: f64, y: f64, size: f64) {
    const SYMBOL: f64 = 18.0;
    const GAP: f64 = 28.0;
    let widths: Vec<f64> = items
        .iter()
        .map(|it| SYMBOL + text_width(&it.label, size))
        .collect();
    let total = widths.iter().sum::<f64>() + GAP * items.len().saturating_sub(1) as f64;
    let mut x = right - total;
    for (it, w) in items.iter().zip(widths) {
        let cx = x + 6.0;
        match it.marker {
            Some((m, r)) => svg.marker(m, (cx, y), r, it.color, None),
            None => svg.line((x, y), (x + 12.0, y), it.color, 2.0),
        }
        svg.text(
            x + SYMBOL,
            y + 0.36 * size,
            &it.label,
            TextStyle::new(size, INK),
        );
        x += w + GAP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TickSpec;

    #[test]
    fn a_panel_maps_its_domain_inside_the_padding() {
        let p = Panel::new(
            (100.0, 50.0, 200.0, 100.0),
            (0.0, 10.0),
            (0.0, 1.0),
            (0.0, 8.0),
        );
        assert_eq!(p.at(0.0, 0.0), (100.0, 142.0));
        assert_eq!(p.at(10.0, 1.0), (300.0, 58.0));
        assert_eq!((p.right(), p.bottom()), (300.0, 150.0));
    }

    #[test]
    fn axes_series_and_legend_are_written() {
        let mut svg = Svg::new(400.0, 300.0, crate::BACKGROUND);
        let p = Panel::new(
            (60.0, 20.0, 300.0, 200.0),
            (0.0, 4.0),
            (0.0, 1.0),
            (4.0, 4.0),
        );
        p.y_axis(
            &mut svg,
            &TickSpec::round(6).ticks(0.0, 1.0),
            "loss",
            14.0,
            12.0,
        );
        p.x_axis(&mut svg, &TickSpec::round(5).ticks(0.0, 4.0), true, 12.0);
        p.frame(&mut svg);
        p.line(
            &mut svg,
            &[(0.0, 1.0), (1.0, 0.5), (4.0, 0.1)],
            crate::PALETTE[0],
            2.0,
        );
        p.labelled_points(
            &mut svg,
            &[(2.0, 0.5, "uniform soup")],
            (Marker::Square, 4.0, crate::PALETTE[2]),
            12.0,
        );
        legend(
            &mut svg,
            &[LegendItem {
                label: "train".into(),
                color: crate::PALETTE[0],
                marker: None,
            }],
            390.0,
            10.0,
            12.0,
        );
        let doc = svg.finish();
        for want in [
            ">0.2<",
            ">4<",
            ">loss<",
            "<polyline",
            ">uniform soup<",
            ">train<",
        ] {
            assert!(doc.contains(want), "{want} missing");
        }
        let png = crate::svg_to_png(&doc, 1.0).expect("renders");
        assert!(png.starts_with(b"\x89PNG"));
    }
}
