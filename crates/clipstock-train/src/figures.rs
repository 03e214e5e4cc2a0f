//! The run's figures, drawn with `clipstock-plot` like the merge figures: `curves.svg/png` in
//! every run directory (training loss, learning rate, ImageNet and OOD-mean accuracy per
//! epoch for each run and the merge, mean t per epoch) and the comparison's
//! `compare/id_vs_ood.svg/png` (ImageNet top-1 against the mean over the shifts, one marker
//! per method, WiSE-FT curves as lines), in the style of the paper's and WiSE-FT's figures.

use clipstock_data::layouts::SetName;
use clipstock_plot::{
    BACKGROUND, INK, LegendItem, Marker, PALETTE, Panel, Rgb, Svg, TextStyle, TickSpec, legend,
    svg_to_png,
};

use crate::compare::MethodRow;
use crate::error::{Result, TrainError};
use crate::rundir::{EpochRow, EvalRecord};

const TITLE_SIZE: f64 = 18.0;
const TEXT_SIZE: f64 = 14.0;
const GREY: Rgb = [127, 127, 127];

/// An SVG this module drew, as a PNG of the same size, for the file `path`.
pub fn png(svg: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    svg_to_png(svg, 1.0).map_err(|e| TrainError::Figure {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `(lo, hi)` covering `values` with a margin of `pad` of the span (a flat range gets ±1).
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 0.0 {
        return (lo - 1.0, hi + 1.0);
    }
    (lo - pad * span, hi + pad * span)
}

fn color(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// The method families of the comparison and how each is drawn: color, marker, and whether it
/// is a curve (WiSE-FT) or points.
fn family_style(family: &str) -> (Rgb, Marker, &'static str) {
    match family {
        "zero_shot" => (GREY, Marker::Square, "zero-shot"),
        "independent" => (PALETTE[0], Marker::Disc, "independent fine-tunes"),
        "model_stock" => (PALETTE[3], Marker::Diamond, "Model Stock (periodic)"),
        "model_stock_posthoc" => (PALETTE[4], Marker::Diamond, "Model Stock (post-hoc)"),
        "uniform_soup" => (PALETTE[2], Marker::Square, "uniform soup"),
        "greedy_soup" => (PALETTE[1], Marker::Square, "greedy soup"),
        "wise_ft" => (PALETTE[0], Marker::Disc, "WiSE-FT (best independent)"),
        _ => (PALETTE[3], Marker::Disc, "Model Stock + WiSE-FT"),
    }
}

fn id_ood(r: &MethodRow) -> Option<(f64, f64)> {
    let id = r.results.get(SetName::ImageNet)?.top1;
    let (ood, _) = r.results.ood_mean()?;
    Some((id, ood))
}

/// ImageNet top-1 (x) against the OOD mean (y): one labelled marker per method (each
/// marker's `<title>` is its method), the two WiSE-FT sweeps as lines with small markers.
pub fn id_vs_ood_svg(name: &str, rows: &[MethodRow]) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 720.0;
    let mut svg = Svg::new(W, H, BACKGROUND);
    svg.text(
        20.0,
        28.0,
        &format!("{name}: ImageNet vs. distribution shifts"),
        TextStyle::new(TITLE_SIZE, INK),
    );
    let pts: Vec<(f64, f64)> = rows.iter().filter_map(id_ood).collect();
    let xr = range(pts.iter().map(|p| p.0), 0.08);
    let yr = range(pts.iter().map(|p| p.1), 0.08);
    let panel = Panel::new((90.0, 80.0, W - 330.0, H - 160.0), xr, yr, (10.0, 10.0));
    panel.y_axis(
        &mut svg,
        &TickSpec::round(8).ticks(yr.0, yr.1),
        "avg. accuracy on the 5 shifts (%)",
        28.0,
        TEXT_SIZE,
    );
    panel.x_axis(
        &mut svg,
        &TickSpec::round(8).ticks(xr.0, xr.1),
        true,
        TEXT_SIZE,
    );
    panel.frame(&mut svg);
    panel.x_label(
        &mut svg,
        "ImageNet top-1 (%)",
        panel.bottom() + 45.0,
        TEXT_SIZE,
    );
    if pts.is_empty() {
        panel.note(
            &mut svg,
            "no method has both ImageNet and shift results",
            TEXT_SIZE,
        );
    }
    // The sweeps first, so the methods' markers sit on top.
    for family in ["wise_ft", "model_stock_wise_ft"] {
        let (color, _, _) = family_style(family);
        let mut sweep: Vec<(f64, f64, f64, &str)> = rows
            .iter()
            .filter(|r| r.family == family)
            .filter_map(|r| {
                id_ood(r).map(|(x, y)| (r.alpha.unwrap_or(0.0), x, y, r.method.as_str()))
            })
            .collect();
        sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<(f64, f64)> = sweep.iter().map(|s| (s.1, s.2)).collect();
        panel.line(&mut svg, &line, color, 2.0);
        for s in &sweep {
            svg.marker(Marker::Disc, panel.at(s.1, s.2), 3.0, color, Some(s.3));
        }
    }
    // Labels that would overlap an earlier one move down a line: soups often land on, or
    // next to, one of their ingredients.
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    for r in rows.iter().filter(|r| !r.family.contains("wise_ft")) {
        let Some((x, y)) = id_ood(r) else { continue };
        let (color, marker, _) = family_style(&r.family);
        let (px, py) = panel.at(x, y);
        svg.marker(marker, (px, py), 6.0, color, Some(&r.method));
        let lx = px + 10.0;
        let w = clipstock_plot::text_width(&r.method, 12.0);
        let mut ly = py + 4.0;
        while placed
            .iter()
            .any(|&(ox, oy, ow)| (ly - oy).abs() < 13.0 && lx < ox + ow && ox < lx + w)
        {
            ly += 13.0;
        }
        placed.push((lx, ly, w));
        svg.text(lx, ly, &r.method, TextStyle::new(12.0, INK));
    }
    let families = [
        "zero_shot",
        "independent",
        "model_stock",
        "model_stock_posthoc",
        "uniform_soup",
        "greedy_soup",
        "wise_ft",
        "model_stock_wise_ft",
    ];
    let mut y = 100.0;
    for f in families {
        if !rows.iter().any(|r| r.family == f) {
            continue;
        }
        let (color, marker, label) = family_style(f);
        let item = LegendItem {
            label: label.into(),
            color,
            marker: if f.contains("wise_ft") {
                None
            } else {
                Some((marker, 6.0))
            },
        };
        legend_at(&mut svg, &item, W - 225.0, y);
        y += 26.0;
    }
    svg.finish()
}

/// One legend item starting at `x` (the figure's legend is a column, not a row).
fn legend_at(svg: &mut Svg, item: &LegendItem, x: f64, y: f64) {
    let width = 18.0 + clipstock_plot::text_width(&item.label, TEXT_SIZE);
    legend(svg, std::slice::from_ref(item), x + width, y, TEXT_SIZE);
}

/// The series of one curve panel: label, color, marker, points.
type Series = (String, Rgb, Marker, Vec<(f64, f64)>);

fn curve_panel(
    svg: &mut Svg,
    (x, y, w, h): (f64, f64, f64, f64),
    title: &str,
    series: &[Series],
    epochs: f64,
) {
    let yr = range(series.iter().flat_map(|s| s.3.iter().map(|p| p.1)), 0.1);
    let panel = Panel::new((x, y, w, h), (0.5, epochs + 0.5), yr, (6.0, 8.0));
    panel.y_axis(
        svg,
        &TickSpec::round(6).ticks(yr.0, yr.1),
        title,
        x - 62.0,
        TEXT_SIZE,
    );
    let xt = TickSpec {
        max: 10,
        steps: TickSpec::ROUND,
        min_step: 1.0,
    }
    .ticks(1.0, epochs.max(1.0));
    panel.x_axis(svg, &xt, true, TEXT_SIZE);
    panel.frame(svg);
    if series.iter().all(|s| s.3.is_empty()) {
        panel.note(svg, "nothing recorded yet", TEXT_SIZE);
    }
    for (label, color, marker, points) in series {
        panel.line(svg, points, *color, 2.0);
        let tips: Vec<String> = points
            .iter()
            .map(|p| format!("{label}: {:.4}", p.1))
            .collect();
        panel.scatter(svg, points, (*marker, 4.0, *color), Some(&tips));
    }
    let mut ly = y + 14.0;
    for (label, color, marker, points) in series {
        if points.is_empty() {
            continue;
        }
        let item = LegendItem {
            label: label.clone(),
            color: *color,
            marker: Some((*marker, 4.0)),
        };
        legend(svg, std::slice::from_ref(&item), x + w - 8.0, ly, 12.0);
        ly += 18.0;
    }
}

/// The run's curves per epoch: training loss per run, learning rate (at each epoch's last
/// step), ImageNet and OOD-mean top-1 of every evaluated model, and the merge's mean t.
/// `runs` names the loss columns (the trainer's labels, in order).
pub fn curves_svg(
    name: &str,
    runs: &[String],
    epochs: &[EpochRow],
    evals: &[EvalRecord],
    total_epochs: u64,
) -> String {
    const W: f64 = 1200.0;
    const H: f64 = 980.0;
    let mut svg = Svg::new(W, H, BACKGROUND);
    svg.text(
        20.0,
        28.0,
        &format!("{name}: training curves per epoch"),
        TextStyle::new(TITLE_SIZE, INK),
    );
    let e = total_epochs.max(1) as f64;
    let (pw, ph) = (470.0, 230.0);
    let cell = |col: usize, row: usize| {
        (
            110.0 + col as f64 * 590.0,
            60.0 + row as f64 * 310.0,
            pw,
            ph,
        )
    };
    let markers = [Marker::Disc, Marker::Square, Marker::Diamond];
    let loss: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let pts = epochs
                .iter()
                .filter_map(|r| {
                    r.loss
                        .get(i)
                        .filter(|l| l.is_finite())
                        .map(|l| (r.epoch as f64, *l))
                })
                .collect();
            (label.clone(), color(i), markers[i % 3], pts)
        })
        .collect();
    curve_panel(&mut svg, cell(0, 0), "training loss", &loss, e);
    let lr: Vec<Series> = vec![(
        "learning rate".into(),
        color(0),
        Marker::Disc,
        epochs.iter().map(|r| (r.epoch as f64, r.lr)).collect(),
    )];
    curve_panel(&mut svg, cell(1, 0), "learning rate", &lr, e);
    let mut models: Vec<String> = Vec::new();
    for ev in evals {
        if ev.epoch > 0 && !models.contains(&ev.model) {
            models.push(ev.model.clone());
        }
    }
    let acc = |f: &dyn Fn(&clipstock_eval::EvalResults) -> Option<f64>| -> Vec<Series> {
        models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let pts = evals
                    .iter()
                    .filter(|ev| &ev.model == m && ev.epoch > 0)
                    .filter_map(|ev| f(&ev.results).map(|v| (ev.epoch as f64, v)))
                    .collect();
                (m.clone(), color(i), markers[i % 3], pts)
            })
            .collect()
    };
    let id = acc(&|r| r.get(SetName::ImageNet).map(|s| s.top1));
    curve_panel(&mut svg, cell(0, 1), "ImageNet top-1 (%)", &id, e);
    let ood = acc(&|r| r.ood_mean().map(|m| m.0));
    curve_panel(&mut svg, cell(1, 1), "OOD mean top-1 (%)", &ood, e);
    let t: Vec<Series> = vec![(
        "mean t".into(),
        color(3),
        Marker::Diamond,
        epochs
            .iter()
            .filter_map(|r| r.mean_t.map(|t| (r.epoch as f64, t)))
            .collect(),
    )];
    curve_panel(&mut svg, cell(0, 2), "merge: mean t", &t, e);
    // Under the lowest panel of each column.
    for (col, row) in [(0, 2), (1, 1)] {
        let (x, y, w, h) = cell(col, row);
        svg.text(
            x + w / 2.0,
            y + h + 48.0,
            "epoch",
            TextStyle::new(TEXT_SIZE, INK).anchor(clipstock_plot::Anchor::Middle),
        );
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipstock_eval::{EvalResults, SetResult};

    fn results(id: f64, ood: f64) -> EvalResults {
        let set = |s: SetName, v: f64| SetResult {
            set: s,
            top1: v,
            top5: v,
            correct1: 0,
            correct5: 0,
            count: 10,
            skipped: vec![],
            num_labels: 10,
            seconds: 1.0,
            images_per_sec: 1.0,
        };
        let mut sets = vec![set(SetName::ImageNet, id)];
        for s in SetName::ALL.into_iter().filter(|s| s.is_shift()) {
            sets.push(set(s, ood));
        }
        EvalResults::new(sets)
    }

    fn row(method: &str, family: &str, alpha: Option<f64>, id: f64, ood: f64) -> MethodRow {
        MethodRow {
            method: method.into(),
            family: family.into(),
            alpha,
            models: 1,
            results: results(id, ood),
            greedy: None,
        }
    }

    #[test]
    fn the_id_vs_ood_figure_has_one_titled_marker_per_method_and_renders() {
        let mut rows = vec![
            row("zero-shot", "zero_shot", None, 60.0, 50.0),
            row("independent 1 (seed 11)", "independent", None, 75.0, 45.0),
            row("greedy soup", "greedy_soup", None, 76.0, 47.0),
        ];
        for (i, a) in [0.0, 0.5, 1.0].into_iter().enumerate() {
            rows.push(row(
                &format!("WiSE-FT α={a:.1}"),
                "wise_ft",
                Some(a),
                60.0 + 8.0 * i as f64,
                50.0 - i as f64,
            ));
        }
        let svg = id_vs_ood_svg("t", &rows);
        assert_eq!(svg.matches("<title>").count(), rows.len(), "{svg}");
        assert!(svg.contains("<polyline"));
        assert!(svg.contains(">greedy soup<"));
        let png = png(&svg, std::path::Path::new("t.png")).expect("renders");
        assert!(png.starts_with(b"\x89PNG"));
    }

    #[test]
    fn curves_render_with_and_without_evaluations() {
        let epochs = vec![
            EpochRow {
                epoch: 1,
                global_step: 10,
                lr: 1e-4,
                loss: vec![1.0, 1.1],
                merged_imagenet: None,
                merged_ood_mean: None,
                mean_t: Some(0.4),
                seconds: 1.0,
            },
            EpochRow {
                epoch: 2,
                global_step: 20,
                lr: 5e-5,
                loss: vec![0.8, 0.9],
                merged_imagenet: None,
                merged_ood_mean: None,
                mean_t: Some(0.5),
                seconds: 1.0,
            },
        ];
        let evals = vec![EvalRecord {
            epoch: 1,
            model: "merged".into(),
            results: results(70.0, 40.0),
        }];
        let runs = vec!["run 1 (seed 1)".to_string(), "run 2 (seed 2)".to_string()];
        let svg = curves_svg("q", &runs, &epochs, &evals, 2);
        assert!(svg.contains(">training loss<") && svg.contains(">merge: mean t<"));
        assert!(svg.contains("merged: 70.0000"));
        assert!(
            png(&svg, std::path::Path::new("c.png"))
                .expect("renders")
                .starts_with(b"\x89PNG")
        );
        let empty = curves_svg("q", &runs, &[], &[], 3);
        assert!(empty.contains("nothing recorded yet"));
        assert!(png(&empty, std::path::Path::new("c.png")).is_ok());
    }
}
