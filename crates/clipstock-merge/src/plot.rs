//! The per-tensor ratio figure of the official tutorial, as a dependency-free SVG: for every
//! merged tensor in model order, the angle between the fine-tuned deltas (degrees, top panel)
//! and the ratio t (bottom panel). Matrices and vectors (biases, LayerNorms) are drawn
//! differently because their angles live in different ranges.

use std::fmt::Write as _;

use crate::report::MergeReport;

const W: f64 = 960.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const GAP: f64 = 50.0;

pub(crate) struct Point {
    pub angle: f64,
    pub t: f64,
    pub matrix: bool,
    pub name: String,
}

/// The plotted tensors in model order: those with an angle and a ratio (Model Stock's merged
/// ones). Non-finite values would stretch an axis to infinity, so they are left out too.
pub(crate) fn points(report: &MergeReport) -> Vec<Point> {
    report
        .tensors
        .iter()
        .filter_map(|r| {
            let (angle, t) = (r.angle_deg?, r.t?);
            (angle.is_finite() && t.is_finite()).then(|| Point {
                angle,
                t,
                matrix: r.shape.len() >= 2,
                name: r.name.clone(),
            })
        })
        .collect()
}

/// Value range of the t panel: always [0, 1], widened to any ratio outside it.
pub(crate) fn t_range(points: &[Point]) -> (f64, f64) {
    (
        points.iter().map(|p| p.t).fold(0.0f64, f64::min),
        points.iter().map(|p| p.t).fold(1.0f64, f64::max),
    )
}

/// Value range of the angle panel: [0, 90°], widened to the largest angle.
pub(crate) fn angle_range(points: &[Point]) -> (f64, f64) {
    (0.0, 90.0_f64.max(max_angle(points)))
}

/// SVG text of the figure; tensors without a ratio (averaged, copied) are left out.
pub fn ratio_plot_svg(report: &MergeReport) -> String {
    let points = points(report);
    let n = points.len().max(1);
    let (t_min, t_max) = t_range(&points);
    let plot_w = W - LEFT - RIGHT;
    let x_of = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n as f64;
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="13">{} — {} tensors with a ratio (● matrices, ◆ vectors)</text>"#,
        escape(&report.summary.method),
        points.len()
    );
    let panels = [
        (
            "angle (°)",
            angle_range(&points).0,
            angle_range(&points).1,
            0usize,
        ),
        ("t", t_min, t_max, 1usize),
    ];
    for (label, lo, hi, which) in panels {
        let y0 = TOP + which as f64 * (PANEL_H + GAP);
        let y_of = |v: f64| y0 + PANEL_H - PANEL_H * (v - lo) / (hi - lo).max(1e-12);
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
        );
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let y = y_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{label}</text>"#,
            y0 + PANEL_H / 2.0,
            y0 + PANEL_H / 2.0
        );
        for (i, p) in points.iter().enumerate() {
            let v = if which == 0 { p.angle } else { p.t };
            let (x, y) = (x_of(i), y_of(v));
            let title = format!("{}: {v:.3}", escape(&p.name));
            if p.matrix {
                let _ = writeln!(
                    s,
                    r##"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="#1f77b4"><title>{title}</title></circle>"##
                );
            } else {
                let _ = writeln!(
                    s,
                    r##"<rect x="{:.1}" y="{:.1}" width="4" height="4" fill="#ff7f0e" transform="rotate(45 {x:.1} {y:.1})"><title>{title}</title></rect>"##,
                    x - 2.0,
                    y - 2.0
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">tensor index in model order (hover for names)</text>"#,
        LEFT + plot_w / 2.0,
        h - 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn max_angle(points: &[Point]) -> f64 {
    points.iter().map(|p| p.angle).fold(0.0, f64::max)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
