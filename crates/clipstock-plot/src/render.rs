//! SVG → PNG through resvg, with the vendored font as the only font and nothing read from disk.

use std::sync::{Arc, OnceLock};

use resvg::tiny_skia;
use resvg::usvg::{self, fontdb};

use crate::font::{FONT_BYTES, FONT_FAMILY};

/// Why an SVG could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the SVG cannot be parsed: {0}")]
    Parse(#[from] usvg::Error),
    #[error("cannot render a {width}×{height} pixel image (scale {scale})")]
    Size { width: f32, height: f32, scale: f32 },
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("PNG decoding failed: {0}")]
    Decode(#[from] png::DecodingError),
}

/// Images larger than this many pixels are refused: a figure is never that big, and a
/// mistaken scale would otherwise allocate gigabytes.
const MAX_PIXELS: u64 = 1 << 26;

/// The font database, built once: only the vendored font, which also stands in for the
/// generic families, so text never depends on what is installed.
fn fonts() -> Arc<fontdb::Database> {
    static DB: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = fontdb::Database::new();
        db.load_font_source(fontdb::Source::Binary(Arc::new(FONT_BYTES)));
        db.set_sans_serif_family(FONT_FAMILY);
        db.set_serif_family(FONT_FAMILY);
        db.set_monospace_family(FONT_FAMILY);
        Arc::new(db)
    })
    .clone()
}

/// Renders `svg` at `scale` × its own pixel size into an 8-bit RGB PNG. Transparent areas
/// come out white. `<image>` references (files or data URLs) are not loaded.
pub fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>, PlotError> {
    let mut opt = usvg::Options {
        font_family: FONT_FAMILY.to_string(),
        fontdb: fonts(),
        ..usvg::Options::default()
    };
    opt.image_href_resolver = usvg::ImageHrefResolver {
        resolve_data: Box::new(|_, _, _| None),
        resolve_string: Box::new(|_, _| None),
    };
    let tree = usvg::Tree::from_str(svg, &opt)?;
    let size = tree.size();
    let (width, height) = (size.width() * scale, size.height() * scale);
    let too_big = || PlotError::Size {
        width,
        height,
        scale,
    };
    if !(width.is_finite() && height.is_finite() && scale > 0.0) {
        return Err(too_big());
    }
    let (w, h) = (width.ceil() as u32, height.ceil() as u32);
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(too_big());
    }
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or_else(too_big)?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    // Premultiplied RGBA over white: c + (1 − α)·255 per channel.
    let rgb: Vec<u8> = pixmap
        .data()
        .chunks_exact(4)
        .flat_map(|p| {
            let under = 255 - p[3];
            [p[0] + under, p[1] + under, p[2] + under]
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Flat areas and few colours: the fast mode already keeps a figure around 100 KB.
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Reads a PNG back into its header and pixel rows, as the figures' tests check what was
/// drawn (sizes, colours, which pixels are set).
pub fn decode_png(bytes: &[u8]) -> Result<(png::OutputInfo, Vec<u8>), PlotError> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    let size = reader.output_buffer_size().ok_or(PlotError::Size {
        width: reader.info().width as f32,
        height: reader.info().height as f32,
        scale: 1.0,
    })?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    Ok((info, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        decode_png(bytes).expect("a valid PNG")
    }

    #[test]
    fn renders_shapes_and_text_with_the_vendored_font() {
        let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" width="60" height="30">
            <rect x="0" y="0" width="10" height="10" fill="#ff0000"/>
            <text x="20" y="25" font-family="sans-serif" font-size="20" fill="#000000">Ag</text>
            </svg>"##;
        let (info, px) = decode(&svg_to_png(svg, 1.0).expect("render"));
        assert_eq!((info.width, info.height), (60, 30));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&px[..3], &[255, 0, 0]);
        // Transparent background: white.
        assert_eq!(&px[3 * 59..3 * 60], &[255, 255, 255]);
        let dark = px.chunks_exact(3).filter(|p| p[0] < 64).count();
        assert!(dark > 30, "the text is drawn: {dark} dark pixels");
        let (info, _) = decode(&svg_to_png(svg, 2.0).expect("render x2"));
        assert_eq!((info.width, info.height), (120, 60));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(svg_to_png("<svg", 1.0), Err(PlotError::Parse(_))));
        let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>"#;
        for scale in [0.0, -1.0, f32::NAN, 1e6] {
            assert!(
                matches!(svg_to_png(svg, scale), Err(PlotError::Size { .. })),
                "{scale}"
            );
        }
    }

    #[test]
    fn images_are_not_loaded_from_disk() {
        let dir = std::env::temp_dir().join(format!("clipstock-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let inner = dir.join("inner.svg");
        std::fs::write(
            &inner,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4" fill="#000000"/></svg>"##,
        )
        .expect("write");
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><image href="{}" width="4" height="4"/></svg>"#,
            inner.display()
        );
        let (_, px) = decode(&svg_to_png(&svg, 1.0).expect("render"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            px.iter().all(|&v| v == 255),
            "the referenced file was drawn"
        );
    }
}
