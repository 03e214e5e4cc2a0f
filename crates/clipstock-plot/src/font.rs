//! The one font every figure uses, compiled into the binary (DejaVu Sans 2.37 from Debian's
//! `fonts-dejavu-core`, unmodified; license in `fonts/LICENSE`).

use skrifa::instance::{LocationRef, Size};
use skrifa::{FontRef, MetadataProvider};

/// The vendored font file.
pub(crate) const FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Its family name, as figures name it in `font-family` (SVG viewers without it fall back to
/// their sans-serif).
pub const FONT_FAMILY: &str = "DejaVu Sans";

/// The font, parsed; `None` only if the vendored file were corrupt (a test checks it is not).
fn font() -> Option<FontRef<'static>> {
    FontRef::new(FONT_BYTES).ok()
}

/// Whether the vendored font draws `ch` (instead of the missing-glyph box).
pub fn has_glyph(ch: char) -> bool {
    font().is_some_and(|f| f.charmap().map(ch).is_some())
}

/// The advance width of `s` set at `size` pixels, for layouts that need to know where a text
/// ends (right-aligned legends, boxes). Kerning is ignored, so this may be off by a pixel or
/// two; characters the font lacks count as 0.6 em.
pub fn text_width(s: &str, size: f64) -> f64 {
    let Some(font) = font() else {
        return 0.6 * size * s.chars().count() as f64;
    };
    let charmap = font.charmap();
    let metrics = font.glyph_metrics(Size::new(size as f32), LocationRef::default());
    s.chars()
        .map(|ch| {
            charmap
                .map(ch)
                .and_then(|g| metrics.advance_width(g))
                .map_or(0.6 * size, f64::from)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_font_parses_and_measures() {
        assert!(font().is_some(), "fonts/DejaVuSans.ttf parses");
        assert!(has_glyph('a') && has_glyph('°') && has_glyph('●'));
        assert!(!has_glyph('\u{10FFFD}'));
        let w = text_width("angle", 15.0);
        // DejaVu Sans is about 0.6 em per lower-case letter.
        assert!((35.0..55.0).contains(&w), "{w}");
        assert_eq!(text_width("", 15.0), 0.0);
        assert!((text_width("ii", 30.0) - 2.0 * text_width("i", 30.0)).abs() < 1e-9);
    }
}
