//! An SVG document built element by element. Coordinates are pixels from the top-left corner;
//! an element with a non-finite coordinate is left out (it could only stretch the figure or
//! make the file unparsable), so callers can pass values straight from data.

use std::fmt::Write as _;

use crate::font::FONT_FAMILY;

/// An 8-bit sRGB colour.
pub type Rgb = [u8; 3];

/// `#rrggbb`.
pub fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Text made safe for XML: markup characters escaped, and characters XML 1.0 forbids even
/// escaped (most control characters) replaced by U+FFFD, so any tensor name or label from a
/// file keeps the document parsable.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Horizontal alignment of text at its anchor point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn svg(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// Size (pixels), colour and alignment of a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStyle {
    pub size: f64,
    pub color: Rgb,
    pub anchor: Anchor,
}

impl TextStyle {
    pub fn new(size: f64, color: Rgb) -> TextStyle {
        TextStyle {
            size,
            color,
            anchor: Anchor::Start,
        }
    }

    pub fn anchor(self, anchor: Anchor) -> TextStyle {
        TextStyle { anchor, ..self }
    }
}

/// Scatter marker shapes; `r` is the distance from the centre to the outline's farthest point
/// (disc radius, diamond vertex, square corner along an axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Disc,
    Diamond,
    Square,
}

/// An SVG document under construction.
#[derive(Debug, Clone)]
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

fn finite(vs: &[f64]) -> bool {
    vs.iter().all(|v| v.is_finite())
}

impl Svg {
    /// A `width` × `height` pixel document filled with `background`.
    pub fn new(width: f64, height: f64, background: Rgb) -> Svg {
        let mut s = Svg {
            width,
            height,
            body: String::new(),
        };
        let _ = writeln!(
            s.body,
            r#"<rect width="100%" height="100%" fill="{}"/>"#,
            hex(background)
        );
        s
    }

    pub fn width(&self) -> f64 {
        self.width
    }

    pub fn height(&self) -> f64 {
        self.height
    }

    /// Text with its baseline at `y`, aligned at `x` by `style.anchor`.
    pub fn text(&mut self, x: f64, y: f64, s: &str, style: TextStyle) {
        self.text_rotated(x, y, s, style, 0.0);
    }

    /// Text read bottom to top (a quarter turn counter-clockwise about its anchor point), as
    /// a y-axis label.
    pub fn text_up(&mut self, x: f64, y: f64, s: &str, style: TextStyle) {
        self.text_rotated(x, y, s, style, -90.0);
    }

    fn text_rotated(&mut self, x: f64, y: f64, s: &str, style: TextStyle, degrees: f64) {
        if !finite(&[x, y, style.size]) {
            return;
        }
        let rotate = if degrees == 0.0 {
            String::new()
        } else {
            format!(r#" transform="rotate({degrees} {x:.1} {y:.1})""#)
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{}" fill="{}" text-anchor="{}"{rotate}>{}</text>"#,
            style.size,
            hex(style.color),
            style.anchor.svg(),
            escape(s)
        );
    }

    /// A line `width` pixels wide. Axis-parallel one-pixel lines are snapped to pixel centres
    /// and drawn without anti-aliasing, so frames and grids stay sharp in the PNG.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), color: Rgb, width: f64) {
        if !finite(&[x1, y1, x2, y2, width]) {
            return;
        }
        let crisp = width <= 1.0 && (x1 == x2 || y1 == y2);
        let snap = |v: f64| if crisp { v.floor() + 0.5 } else { v };
        let _ = writeln!(
            self.body,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="{width}"{}/>"#,
            snap(x1),
            snap(y1),
            snap(x2),
            snap(y2),
            hex(color),
            if crisp {
                r#" shape-rendering="crispEdges""#
            } else {
                ""
            }
        );
    }

    /// The outline of a rectangle, one pixel wide and sharp.
    pub fn frame(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb) {
        if !finite(&[x, y, w, h]) {
            return;
        }
        let _ = writeln!(
            self.body,
            r#"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="{}" shape-rendering="crispEdges"/>"#,
            x.floor() + 0.5,
            y.floor() + 0.5,
            hex(color)
        );
    }

    /// A polyline through `points`; non-finite points break it into separate runs.
    pub fn polyline(&mut self, points: &[(f64, f64)], color: Rgb, width: f64) {
        for run in points.split(|(x, y)| !finite(&[*x, *y])) {
            if run.len() < 2 {
                continue;
            }
            let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                self.body,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}" stroke-linejoin="round"/>"#,
                pts.join(" "),
                hex(color)
            );
        }
    }

    /// A filled marker centred at (x, y); `tooltip` becomes its `<title>` (shown on hover by
    /// SVG viewers, not drawn).
    pub fn marker(
        &mut self,
        marker: Marker,
        (x, y): (f64, f64),
        r: f64,
        color: Rgb,
        tooltip: Option<&str>,
    ) {
        if !finite(&[x, y, r]) {
            return;
        }
        let fill = hex(color);
        let shape = match marker {
            Marker::Disc => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}""#),
            Marker::Diamond => format!(
                r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="{fill}""#,
                y - r,
                x + r,
                y + r,
                x - r
            ),
            Marker::Square => format!(
                r#"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" fill="{fill}""#,
                x - r,
                y - r,
                2.0 * r,
                2.0 * r
            ),
        };
        self.body.push_str(&shape);
        match tooltip {
            Some(t) => {
                let _ = writeln!(
                    self.body,
                    "><title>{}</title></{}>",
                    escape(t),
                    match marker {
                        Marker::Disc => "circle",
                        Marker::Diamond => "polygon",
                        Marker::Square => "rect",
                    }
                );
            }
            None => self.body.push_str("/>\n"),
        }
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
             viewBox=\"0 0 {} {}\" font-family=\"{FONT_FAMILY}, sans-serif\">\n{}</svg>\n",
            self.width, self.height, self.width, self.height, self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_any_name_parsable() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y\u{FFFF}"), "x\u{FFFD}y\u{FFFD}");
        assert_eq!(escape("°·é\t"), "°·é\t");
    }

    #[test]
    fn non_finite_coordinates_are_left_out() {
        let mut s = Svg::new(10.0, 10.0, [255; 3]);
        let before = s.body.len();
        s.marker(Marker::Disc, (f64::NAN, 1.0), 2.0, [0; 3], None);
        s.line((0.0, 0.0), (f64::INFINITY, 0.0), [0; 3], 1.0);
        s.text(1.0, f64::NEG_INFINITY, "x", TextStyle::new(10.0, [0; 3]));
        s.polyline(&[(0.0, 0.0), (f64::NAN, 1.0), (2.0, 2.0)], [0; 3], 1.0);
        assert_eq!(s.body.len(), before);
        s.polyline(
            &[(0.0, 0.0), (1.0, 1.0), (f64::NAN, 1.0), (2.0, 2.0)],
            [0; 3],
            1.0,
        );
        assert_eq!(s.body.matches("<polyline").count(), 1);
    }

    #[test]
    fn markers_carry_their_tooltips() {
        let mut s = Svg::new(10.0, 10.0, [255; 3]);
        s.marker(Marker::Disc, (1.0, 1.0), 2.0, [31, 119, 180], Some("a<b"));
        s.marker(Marker::Diamond, (5.0, 5.0), 2.0, [0; 3], None);
        let doc = s.finish();
        assert!(doc.contains(r##"fill="#1f77b4"><title>a&lt;b</title></circle>"##));
        assert!(doc.contains("<polygon points=\"5.0,3.0 7.0,5.0 5.0,7.0 3.0,5.0\""));
    }
}
