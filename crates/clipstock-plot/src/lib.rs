//! Figures as SVG, and the same SVG as PNG.
//!
//! A figure is written once, as SVG text, with the primitives here: [`Svg`] (a document with
//! text, lines and [`Marker`]s), [`Panel`] (a framed plot area with its two [`Scale`]s, grid,
//! [`ticks`], tick labels, axis labels, scatter and line series) and [`legend`]. The PNG is that
//! SVG rendered by resvg ([`svg_to_png`]) with the one font vendored in this crate (DejaVu Sans,
//! `fonts/LICENSE`), so a PNG looks the same on every machine and never depends on the fonts
//! installed there. Text widths for layout ([`text_width`]) come from the same font.
//!
//! No burn and no model: figures are drawn from plain numbers.

mod axis;
mod chart;
mod font;
mod render;
mod svg;

pub use axis::{Scale, TickSpec, tick_label, ticks};
pub use chart::{LegendItem, Panel, legend};
pub use font::{FONT_FAMILY, has_glyph, text_width};
pub use render::{PlotError, decode_png, svg_to_png};
pub use svg::{Anchor, Marker, Rgb, Svg, TextStyle, escape, hex};

/// Text colour.
pub const INK: Rgb = [34, 34, 34];
/// Panel frames, tick marks and notes.
pub const FRAME: Rgb = [136, 136, 136];
/// Grid lines.
pub const GRID: Rgb = [232, 232, 232];
/// Figure background.
pub const BACKGROUND: Rgb = [255, 255, 255];
/// Series colours in order: matplotlib's first five, so figures read like the paper's.
pub const PALETTE: [Rgb; 5] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
];
