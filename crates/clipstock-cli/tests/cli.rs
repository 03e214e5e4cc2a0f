//! The binary as users run it: the quickstart command, and bad inputs that must fail with one
//! clear error line and a non-zero exit code.

mod common;
use common::{assert_fails_with, assert_ok, clipstock, root};

use std::path::{Path, PathBuf};

use clipstock_model::{HostTensor, StateDict};

fn fixture(name: &str) -> PathBuf {
    root()
        .join("crates/clipstock-model/tests/fixtures")
        .join(name)
}

#[test]
fn zeroshot_reproduces_open_clip_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("parity_prompts.json")).expect("prompts"),
    )
    .expect("json");
    let classes = dir.path().join("classes.json");
    std::fs::write(&classes, prompts["zeroshot_classes"].to_string()).expect("write");
    let out = dir.path().join("head.safetensors");
    let weights = fixture("openclip_tiny.safetensors");
    let res = clipstock(&[
        "zeroshot",
        "--weights",
        weights.to_str().expect("utf8"),
        "--classes",
        classes.to_str().expect("utf8"),
        "--templates",
        "data/openai_imagenet_templates.json",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_ok(&res);
    let head = StateDict::read(&out).expect("head");
    let want = StateDict::read(&fixture("parity_expected.safetensors")).expect("expected");
    let got = &head.get("classification_head.weight").expect("weight").data;
    let want = &want.get("openclip.zeroshot_head").expect("fixture").data;
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / 100.0)
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "max abs diff (unit scale) {worst:e}");
    let bias = &head.get("classification_head.bias").expect("bias").data;
    assert!(bias.iter().all(|b| *b == 0.0));
}

#[test]
fn info_and_forward_run_on_the_fixture() {
    let w = fixture("openclip_tiny.safetensors");
    let res = clipstock(&["info", w.to_str().expect("utf8")]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert_ok(&res);
    assert!(
        stdout.contains("naming:     openai") && stdout.contains("validation: ok"),
        "{stdout}"
    );
    let res = clipstock(&["forward", "--weights", w.to_str().expect("utf8")]);
    assert_ok(&res);
    assert!(String::from_utf8_lossy(&res.stdout).contains("image 3:"));
}

fn tampered(edit: impl FnOnce(&mut StateDict)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sd = StateDict::read(&fixture("openclip_tiny.safetensors")).expect("read");
    edit(&mut sd);
    let p = dir.path().join("bad.safetensors");
    sd.write_safetensors(&p, None, None).expect("write");
    (dir, p)
}

#[test]
fn missing_tensor_is_named() {
    let (_d, p) = tampered(|sd| {
        sd.remove("visual.transformer.resblocks.1.ln_2.bias");
    });
    let out = clipstock(&["info", p.to_str().expect("utf8")]);
    assert_fails_with(
        &out,
        &[
            "bad.safetensors",
            "missing tensor",
            "visual.transformer.resblocks.1.ln_2.bias",
        ],
    );
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let (_d, p) = tampered(|sd| {
        let t = sd.remove("visual.ln_post.weight").expect("present");
        let mut data = t.data.clone();
        data.push(1.0);
        sd.insert(
            "visual.ln_post.weight",
            HostTensor::new(vec![data.len()], t.dtype, data),
        );
    });
    let out = clipstock(&["forward", "--weights", p.to_str().expect("utf8")]);
    assert_fails_with(&out, &["visual.ln_post.weight", "[129]", "[128]"]);
}

#[test]
fn truncated_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixture("openclip_tiny.safetensors")).expect("read");
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let out = clipstock(&["info", p.to_str().expect("utf8")]);
    assert_fails_with(&out, &["cut.safetensors", "not a valid safetensors"]);
}

#[test]
fn non_clip_files_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("resnet.safetensors");
    let mut sd = StateDict::new();
    sd.insert(
        "fc.weight",
        HostTensor::new(vec![2, 2], clipstock_model::DType::F32, vec![0.0; 4]),
    );
    sd.write_safetensors(&p, None, None).expect("write");
    let out = clipstock(&["info", p.to_str().expect("utf8")]);
    assert_fails_with(&out, &["resnet.safetensors", "CLIP", "fc.weight"]);

    let txt = dir.path().join("readme.txt");
    std::fs::write(&txt, "just text").expect("write");
    let out = clipstock(&["info", txt.to_str().expect("utf8")]);
    assert_fails_with(
        &out,
        &["readme.txt", "neither a safetensors file nor a PyTorch"],
    );

    let out = clipstock(&["info", "does/not/exist.safetensors"]);
    assert_fails_with(&out, &["does/not/exist.safetensors"]);
}

#[test]
fn unknown_device_is_a_usage_error() {
    let out = clipstock(&["bench", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"));
}

fn merge_fixture(name: &str) -> String {
    root()
        .join("crates/clipstock-merge/tests/fixtures")
        .join(name)
        .to_string_lossy()
        .to_string()
}

#[test]
fn merge_reproduces_the_numpy_model_stock_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("merged.safetensors");
    let report = dir.path().join("report.json");
    for (models, expected) in [
        (vec!["model1", "model2"], "expected_n2.safetensors"),
        (
            vec!["model1", "model2", "model3"],
            "expected_n3.safetensors",
        ),
    ] {
        let mut args = vec![
            "merge".to_string(),
            "--anchor".into(),
            merge_fixture("w0.safetensors"),
            "--models".into(),
        ];
        args.extend(
            models
                .iter()
                .map(|m| merge_fixture(&format!("{m}.safetensors"))),
        );
        args.extend([
            "--out".into(),
            out.to_string_lossy().to_string(),
            "--report".into(),
            report.to_string_lossy().to_string(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let res = clipstock(&argv);
        assert_ok(&res);
        let got = StateDict::read(&out).expect("merged");
        let want = StateDict::read(Path::new(&merge_fixture(expected))).expect("expected");
        for (name, w) in want.iter() {
            let g = got.get(name).unwrap_or_else(|| panic!("{name} missing"));
            for (a, b) in g.data.iter().zip(&w.data) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name}: {a} vs {b}"
                );
            }
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
        assert!(json["tensors"].as_array().is_some_and(|t| !t.is_empty()));
    }
    let plot = dir.path().join("ratios.svg");
    let res = clipstock(&[
        "inspect",
        report.to_str().expect("utf8"),
        "--plot",
        plot.to_str().expect("utf8"),
    ]);
    assert_ok(&res);
    let svg = std::fs::read_to_string(&plot).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("<circle") && svg.contains("in_proj_weight"));
    // The same figure as PNG, chosen by the extension (any case).
    let png = dir.path().join("ratios.PNG");
    let res = clipstock(&[
        "inspect",
        report.to_str().expect("utf8"),
        "--plot",
        png.to_str().expect("utf8"),
    ]);
    assert_ok(&res);
    let bytes = std::fs::read(&png).expect("png");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG signature");
    // IHDR, the first chunk: width and height, big-endian.
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!((be(&bytes[16..20]), be(&bytes[20..24])), (1200, 700));
    let bad = clipstock(&[
        "inspect",
        report.to_str().expect("utf8"),
        "--plot",
        dir.path().join("r.jpg").to_str().expect("utf8"),
    ]);
    assert_fails_with(&bad, &["r.jpg", "*.png", "*.svg"]);
    assert!(!dir.path().join("r.jpg").exists());
    // `merge` rejects the name before merging: no output either.
    let out = dir.path().join("never.safetensors");
    let bad = clipstock(&[
        "merge",
        "--anchor",
        &merge_fixture("w0.safetensors"),
        "--models",
        &merge_fixture("model1.safetensors"),
        &merge_fixture("model2.safetensors"),
        "--out",
        out.to_str().expect("utf8"),
        "--plot",
        dir.path().join("r.pdf").to_str().expect("utf8"),
    ]);
    assert_fails_with(&bad, &["r.pdf", "*.png", "*.svg"]);
    assert!(!out.exists());
}

#[test]
fn merge_with_one_model_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("merged.safetensors");
    let res = clipstock(&[
        "merge",
        "--anchor",
        &merge_fixture("w0.safetensors"),
        "--models",
        &merge_fixture("model1.safetensors"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_fails_with(&res, &["2"]);
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
}

#[test]
fn merge_reads_pytorch_pickles_too() {
    // The same pickle as anchor and models: every delta is zero, so the merge is the anchor.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("merged.safetensors");
    let pt = fixture("soups_tiny.pt");
    let pt = pt.to_str().expect("utf8");
    let res = clipstock(&[
        "merge",
        "--anchor",
        pt,
        "--models",
        pt,
        pt,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_ok(&res);
    let merged = StateDict::read(&out).expect("merged");
    let src = StateDict::read(&fixture("soups_tiny.pt")).expect("pickle");
    assert_eq!(merged.len(), src.len());
    for (name, t) in src.iter() {
        assert_eq!(merged.get(name).map(|m| &m.data), Some(&t.data), "{name}");
    }
}
