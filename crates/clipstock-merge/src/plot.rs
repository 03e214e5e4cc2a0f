//! The per-tensor ratio figure of the official tutorial: for every merged tensor in model
//! order, the angle between the fine-tuned deltas (degrees, top panel) and the ratio t (bottom
//! panel). Matrices and vectors (biases, LayerNorms) are drawn differently because their angles
//! live in different ranges. One SVG, drawn with `clipstock-plot`'s primitives; the PNG is that
//! SVG rendered, so both files of one merge show the same figure.

use clipstock_plot::{
    BACKGROUND, INK, LegendItem, Marker, PALETTE, Panel, Rgb, Svg, TextStyle, TickSpec, legend,
    svg_to_png,
};

use crate::report::MergeReport;

/// Figure size in pixels (the PNG's too).
const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 700.0;

const LEFT: f64 = 100.0;
const RIGHT: f64 = 24.0;
/// Title and legend sit above this line, the panels below it.
const TOP: f64 = 64.0;
const PANEL_H: f64 = 248.0;
const GAP: f64 = 60.0;
/// Vertical margin between a panel's frame and its value range.
const PAD: f64 = 8.0;

const TITLE_SIZE: f64 = 18.0;
const TEXT_SIZE: f64 = 15.0;

const MATRIX_RGB: Rgb = PALETTE[0];
const VECTOR_RGB: Rgb = PALETTE[1];
const MATRIX: (Marker, f64, Rgb) = (Marker::Disc, 3.5, MATRIX_RGB);
const VECTOR: (Marker, f64, Rgb) = (Marker::Diamond, 5.0, VECTOR_RGB);

struct Point {
    angle: f64,
    t: f64,
    matrix: bool,
    name: String,
}

/// The plotted tensors in model order: those with an angle and a ratio (Model Stock's merged
/// ones). Non-finite values would stretch an axis to infinity, so they are left out too.
fn points(report: &MergeReport) -> Vec<Point> {
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

/// One of the two stacked panels.
struct PanelSpec {
    label: &'static str,
    range: (f64, f64),
    /// Tick steps to choose from (times powers of ten).
    steps: &'static [f64],
    value: fn(&Point) -> f64,
}

/// SVG text of the figure (1200 × 700): the angle between the fine-tuned deltas and the ratio
/// t for every tensor with a ratio, in model order; matrices are blue discs, vectors orange
/// diamonds, and each marker's tooltip names its tensor. A report without ratios (not a Model
/// Stock merge) gives the empty axes and a note saying so.
pub fn ratio_plot_svg(report: &MergeReport) -> String {
    let points = points(report);
    let mut svg = Svg::new(WIDTH, HEIGHT, BACKGROUND);
    svg.text(
        20.0,
        27.0,
        &format!(
            "{}: per-tensor angle and ratio t ({} tensors with a ratio)",
            report.summary.method,
            points.len()
        ),
        TextStyle::new(TITLE_SIZE, INK),
    );
    // Right-aligned under the title: beside it there is no room once a method name is long.
    legend(
        &mut svg,
        &[
            LegendItem {
                label: "matrix (weight)".into(),
                color: MATRIX_RGB,
                marker: Some((MATRIX.0, 5.0)),
            },
            LegendItem {
                label: "vector (bias, LayerNorm)".into(),
                color: VECTOR_RGB,
                marker: Some((VECTOR.0, 7.0)),
            },
        ],
        WIDTH - RIGHT,
        43.0,
        TEXT_SIZE,
    );

    let n = points.len().max(1);
    // Tensor i is drawn at the centre of the i-th of n equal columns.
    let x_domain = (-0.5, n as f64 - 0.5);
    let x_ticks = if points.is_empty() {
        (1.0, Vec::new())
    } else {
        TickSpec {
            max: 12,
            steps: TickSpec::ROUND,
            min_step: 1.0,
        }
        .ticks(0.0, (points.len() - 1) as f64)
    };
    let t_range = (
        points.iter().map(|p| p.t).fold(0.0f64, f64::min),
        points.iter().map(|p| p.t).fold(1.0f64, f64::max),
    );
    let panels = [
        PanelSpec {
            label: "angle (°)",
            range: (0.0, points.iter().map(|p| p.angle).fold(90.0, f64::max)),
            // Degrees read best in multiples of 15.
            steps: &[1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 90.0],
            value: |p| p.angle,
        },
        PanelSpec {
            label: "ratio t",
            range: t_range,
            steps: &[1.0, 2.0, 2.5, 5.0],
            value: |p| p.t,
        },
    ];
    let mut lowest = None;
    for (k, spec) in panels.into_iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL_H + GAP);
        let panel = Panel::new(
            (LEFT, y0, WIDTH - LEFT - RIGHT, PANEL_H),
            x_domain,
            spec.range,
            (0.0, PAD),
        );
        let y_ticks = TickSpec {
            max: 7,
            steps: spec.steps,
            min_step: 0.0,
        }
        .ticks(spec.range.0, spec.range.1);
        panel.y_axis(&mut svg, &y_ticks, spec.label, 30.0, TEXT_SIZE);
        panel.x_axis(&mut svg, &x_ticks, k == 1, TEXT_SIZE);
        panel.frame(&mut svg);
        if points.is_empty() {
            panel.note(
                &mut svg,
                "no tensor has a ratio (only Model Stock merges have one)",
                TEXT_SIZE,
            );
        }
        // Vectors after matrices: they are fewer and would otherwise vanish under the discs.
        for (matrix, style) in [(true, MATRIX), (false, VECTOR)] {
            let (xy, tips): (Vec<(f64, f64)>, Vec<String>) = points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matrix == matrix)
                .map(|(i, p)| {
                    let v = (spec.value)(p);
                    ((i as f64, v), format!("{}: {v:.3}", p.name))
                })
                .unzip();
            panel.scatter(&mut svg, &xy, style, Some(&tips));
        }
        lowest = Some(panel);
    }
    if let Some(panel) = lowest {
        panel.x_label(
            &mut svg,
            "tensor index in model order",
            panel.bottom() + 50.0,
            TEXT_SIZE,
        );
    }
    svg.finish()
}

/// The figure of [`ratio_plot_svg`] as an RGB PNG of the same size, for viewers, notebooks
/// and issue trackers that do not render SVG.
pub fn ratio_plot_png(report: &MergeReport) -> Vec<u8> {
    // The SVG is built here at a fixed size with every text escaped (invalid XML characters
    // included), so rendering it cannot fail; a test renders hostile tensor names and
    // extreme values to hold that.
    svg_to_png(&ratio_plot_svg(report), 1.0)
        .expect("the ratio figure's own SVG renders at its fixed size")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MergeOptions, Method, TensorRef, merge_tensors};
    use clipstock_plot::has_glyph;

    // Moved here from plot_png.rs, whose rasteriser this figure's rendering replaced.
    const WIDTH: usize = super::WIDTH as usize;
    const HEIGHT: usize = super::HEIGHT as usize;
    const TOP: usize = super::TOP as usize;

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
        clipstock_plot::decode_png(bytes).expect("a valid PNG")
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
    fn every_character_the_figure_uses_has_a_glyph() {
        let used = "model_stock uniform_soup wise_ft task_arithmetic: angle (°) ratio t per tensor \
                    with a ratio matrix (weight) vector (bias, LayerNorm) tensor index in model \
                    order no tensor has a ratio (only Model Stock merges have one) -0.123456789";
        for ch in used.chars() {
            assert!(has_glyph(ch), "no glyph for {ch:?}");
        }
    }

    #[test]
    fn any_tensor_name_keeps_both_files_valid() {
        let (mut stock, _) = reports();
        stock.tensors[0].name = "a<b>&\"c'\u{1}\u{7}\u{FFFF}]]>".into();
        stock.tensors[1].name = "visual.transformer.resblocks.0.attn.in_proj_weight".into();
        let svg = ratio_plot_svg(&stock);
        assert!(svg.starts_with("<svg") && svg.contains("<circle"));
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\u{FFFD}\u{FFFD}]]&gt;"));
        assert!(svg.contains("in_proj_weight: "));
        let (info, _) = decode(&ratio_plot_png(&stock));
        assert_eq!(info.width, WIDTH as u32);
    }

    #[test]
    fn the_svg_shows_the_same_figure() {
        let (stock, _) = reports();
        let svg = ratio_plot_svg(&stock);
        assert!(svg.contains(r#"width="1200" height="700""#));
        assert!(svg.contains("model_stock: per-tensor angle and ratio t (3 tensors with a ratio)"));
        // Two matrices and one vector per panel, plus the legend's two markers.
        assert_eq!(svg.matches("<circle").count(), 2 * 2 + 1);
        assert_eq!(svg.matches("<polygon").count(), 2 + 1);
        assert!(svg.contains(">angle (°)<") && svg.contains(">ratio t<"));
    }
}
