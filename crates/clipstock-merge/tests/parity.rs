//! Parity with the independent numpy implementation of scripts/make_merge_fixtures.py, and
//! equality of the HF q/k/v-grouped ratios with the fused in_proj ones.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clipstock_merge::Source;
use clipstock_merge::{
    Action, Flag, MergeOptions, MergeReport, Method, ReadMode, SafetensorsFile, TensorReport,
    analyze_files, merge_files,
};
use common::{assert_close, fixture, load};
use serde_json::Value;

/// The model crate's HF q/k/v rule (`clipstock_model::naming::HF_QKV_GROUP`, which the CLI
/// passes for HF checkpoints), written out here: merge's tests must not pull in the model
/// crate and burn.
const HF_QKV_GROUP: &str = r"^(?:.*\.)?self_attn\.(?P<member>[qkv])_proj\.(?:weight|bias)$";

fn ratios() -> Value {
    let text = std::fs::read_to_string(fixture("expected_ratios.json")).expect("ratios json");
    serde_json::from_str(&text).expect("parse ratios")
}

fn models(n: usize, prefix: &str) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| fixture(&format!("{prefix}model{i}.safetensors")))
        .collect()
}

fn by_name(report: &MergeReport) -> BTreeMap<&str, &TensorReport> {
    report
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

/// Ratios to 1e-9 (relative once |t| > 1: t reaches about −2 here).
fn assert_ratio(what: &str, got: f64, want: f64) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:.15} want {want:.15}"
    );
}

fn check_case(case: &str, n: usize, opts: &MergeOptions, mode: ReadMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("merged.safetensors");
    let mut opts = opts.clone();
    opts.read_mode = mode;
    let report = merge_files(
        Some(&fixture("w0.safetensors")),
        &models(n, ""),
        &out,
        &opts,
    )
    .unwrap_or_else(|e| panic!("{case}: {e}"));

    // Values: both sides evaluate t·mean + (1 − t)·w0 in f64 and round once, so they agree to
    // an ulp; 1e-6 relative leaves room, the absolute term covers values near zero.
    let got = load(&out);
    let want = load(&fixture(&format!("expected_{case}.safetensors")));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dtype, safetensors::Dtype::F32, "{name}");
        assert_eq!(g.shape, w.shape, "{name}");
        assert_close(&format!("{case} {name}"), &g.data, &w.data, 1e-6, 1e-9);
    }

    // Ratios, cosines and norms against the numpy reference.
    let expected = &ratios()[case];
    let lines = by_name(&report);
    let mut merged = 0;
    for (name, exp) in expected.as_object().expect("object") {
        let line = lines[name.as_str()];
        let f = |k: &str| exp[k].as_f64().expect("number");
        assert_ratio(&format!("{case} {name} t"), line.t.expect("t"), f("t"));
        assert_ratio(
            &format!("{case} {name} cos"),
            line.cos.expect("cos"),
            f("cos"),
        );
        let norms: Vec<f64> = exp["norms"]
            .as_array()
            .expect("norms")
            .iter()
            .map(|v| v.as_f64().expect("norm"))
            .collect();
        assert_eq!(line.delta_norms.len(), n);
        for (a, b) in line.delta_norms.iter().zip(&norms) {
            assert!(
                (a - b).abs() <= 1e-12 * b.max(1.0),
                "{name} norm {a} vs {b}"
            );
        }
        merged += 1;
    }
    // Every tensor the reference merged was merged (or copied, if untouched) here; the rest
    // were averaged.
    for line in &report.tensors {
        let in_ref = expected.get(&line.name).is_some();
        match line.action {
            Action::Merged | Action::Copied => assert!(in_ref, "{}", line.name),
            Action::Averaged => {
                assert!(!in_ref, "{}", line.name);
                assert!(line.has(Flag::Unselected));
            }
            Action::Anchor => panic!("{}: no tensor should stay at the anchor", line.name),
        }
    }
    assert_eq!(
        report.summary.merged + report.summary.copied,
        merged,
        "{case}"
    );

    // The analysis alone gives the same report lines.
    let analysed =
        analyze_files(Some(&fixture("w0.safetensors")), &models(n, ""), &opts).expect("analyze");
    assert_eq!(analysed.tensors, report.tensors);

    // Output order and names are the anchor's.
    let anchor = SafetensorsFile::open(&fixture("w0.safetensors"), ReadMode::Read).expect("w0");
    let merged_file = SafetensorsFile::open(&out, ReadMode::Read).expect("merged");
    let names = |f: &SafetensorsFile| {
        f.tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&merged_file), names(&anchor));
    assert!(merged_file.metadata().contains_key("clipstock_merge"));
}

#[test]
fn model_stock_n2_matches_numpy() {
    for mode in [ReadMode::Auto, ReadMode::Read] {
        check_case("n2", 2, &MergeOptions::default(), mode);
    }
}

#[test]
fn model_stock_n3_matches_numpy() {
    for mode in [ReadMode::Mmap, ReadMode::Read] {
        check_case("n3", 3, &MergeOptions::default(), mode);
    }
}

#[test]
fn selected_tensors_merged_the_rest_averaged_matches_numpy() {
    let opts = MergeOptions {
        include: vec![r"^visual\.".into(), r"^classification_head\.".into()],
        ..MergeOptions::default()
    };
    check_case("n2_vision", 2, &opts, ReadMode::Auto);
}

#[test]
fn degenerate_tensors_are_flagged_not_nan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let report = merge_files(
        Some(&fixture("w0.safetensors")),
        &models(2, ""),
        &out,
        &MergeOptions::default(),
    )
    .expect("merge");
    let lines = by_name(&report);

    // Untouched by every model: copied bit for bit, t = 0.
    for name in ["visual.ln_pre.bias", "logit_scale"] {
        let l = lines[name];
        assert_eq!(l.action, Action::Copied, "{name}");
        assert!(l.has(Flag::Identical) && l.has(Flag::ZeroNorm), "{name}");
        assert_eq!((l.cos, l.t), (Some(0.0), Some(0.0)), "{name}");
        assert!(!l.has(Flag::NegativeCos), "{name}");
    }
    assert_eq!(lines["logit_scale"].shape, Vec::<usize>::new());
    let got = load(&out);
    let w0 = load(&fixture("w0.safetensors"));
    assert_eq!(
        got["visual.ln_pre.bias"].data,
        w0["visual.ln_pre.bias"].data
    );

    // Untouched by model 1 only: zero norm reported, cos 0, merged to w0.
    let l = lines["visual.ln_post.bias"];
    assert_eq!(l.action, Action::Merged);
    assert!(l.has(Flag::ZeroNorm));
    assert_eq!(l.delta_norms[0], 0.0);
    assert_eq!(l.t, Some(0.0));

    // Anti-correlated deltas: negative cos, negative t, reported.
    let l = lines["visual.class_embedding"];
    assert!(l.cos.expect("cos") < 0.0 && l.t.expect("t") < 0.0);
    assert!(l.has(Flag::NegativeCos));
    assert!(l.angle_deg.expect("angle") > 90.0);
    assert!(report.summary.cos_le_zero >= 1);
    let text = report.summary_text();
    assert!(text.contains("visual.class_embedding"), "{text}");
    assert!(text.contains("cos <= 0"), "{text}");

    // Everything finite.
    for (name, t) in &got {
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn clamp_t_keeps_negative_cos_tensors_at_the_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let opts = MergeOptions::new(Method::ModelStock { clamp_t: true });
    let report = merge_files(
        Some(&fixture("w0.safetensors")),
        &models(2, ""),
        &out,
        &opts,
    )
    .expect("merge");
    let unclamped = ratios()["n2"]["visual.class_embedding"]["t"]
        .as_f64()
        .expect("t");
    let l = by_name(&report)["visual.class_embedding"];
    assert_eq!(l.t, Some(0.0));
    assert!(l.has(Flag::Clamped));
    assert_ratio("t_unclamped", l.t_unclamped.expect("unclamped"), unclamped);
    let got = load(&out);
    let w0 = load(&fixture("w0.safetensors"));
    assert_eq!(
        got["visual.class_embedding"].data,
        w0["visual.class_embedding"].data
    );
    assert!(report.summary.t_min.expect("t_min") >= 0.0);
    assert!(report.summary.t_max.expect("t_max") <= 1.0);
}

/// The HF copies hold the same weights with q/k/v split out of in_proj: grouped by the preset,
/// each layer's q/k/v ratio must equal the fused tensor's, and the merged q/k/v rows must equal
/// the fused merge's rows. Without grouping the ratios differ (which is why grouping exists).
#[test]
fn hf_qkv_groups_reproduce_the_fused_in_proj_ratios() {
    let names: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hf_names.json")).expect("names"))
            .expect("parse names");
    let names = names.as_object().expect("object");
    let dir = tempfile::tempdir().expect("tempdir");

    for n in [2, 3] {
        let fused_out = dir.path().join(format!("fused{n}.safetensors"));
        let fused = merge_files(
            Some(&fixture("w0.safetensors")),
            &models(n, ""),
            &fused_out,
            &MergeOptions::default(),
        )
        .expect("fused merge");
        let fused_lines = by_name(&fused);

        let opts = MergeOptions {
            groups: vec![HF_QKV_GROUP.to_string()],
            ..MergeOptions::default()
        };
        let hf_out = dir.path().join(format!("hf{n}.safetensors"));
        let hf = merge_files(
            Some(&fixture("hf_w0.safetensors")),
            &models(n, "hf_"),
            &hf_out,
            &opts,
        )
        .expect("hf merge");
        let hf_lines = by_name(&hf);
        // merge_files computes grouped statistics up front and the rest tensor by tensor while
        // writing; the analysis alone does all of them first: same report lines.
        let analysed = analyze_files(
            Some(&fixture("hf_w0.safetensors")),
            &models(n, "hf_"),
            &opts,
        )
        .expect("hf analysis");
        assert_eq!(analysed.tensors, hf.tensors);

        let fused_vals = load(&fused_out);
        let hf_vals = load(&hf_out);
        let mut grouped = 0;
        for (hf_name, m) in names {
            let oc = m["openai"].as_str().expect("openai name");
            let (h, f) = (hf_lines[hf_name.as_str()], fused_lines[oc]);
            // Same ratio: exactly the same Gram up to summation order.
            let (th, tf) = (h.t.expect("t"), f.t.expect("t"));
            assert!(
                (th - tf).abs() <= 1e-12 * tf.abs().max(1.0),
                "N={n} {hf_name}: t {th} vs fused {oc} t {tf}"
            );
            // Same values: the HF tensor is a row block (or the transpose) of the fused one.
            let fv = &fused_vals[oc];
            let want: Vec<f32> = if let Some(rows) = m["rows"].as_array() {
                grouped += 1;
                assert!(h.group.as_deref().is_some_and(|g| g.contains("*_proj")));
                let r0 = rows[0].as_u64().expect("row") as usize;
                let r1 = rows[1].as_u64().expect("row") as usize;
                let cols = fv.shape.get(1).copied().unwrap_or(1);
                fv.data[r0 * cols..r1 * cols].to_vec()
            } else if m["transposed"].as_bool() == Some(true) {
                let (r, c) = (fv.shape[0], fv.shape[1]);
                (0..c)
                    .flat_map(|j| (0..r).map(move |i| (i, j)))
                    .map(|(i, j)| fv.data[i * c + j])
                    .collect()
            } else {
                fv.data.clone()
            };
            assert_close(hf_name, &hf_vals[hf_name].data, &want, 1e-6, 1e-9);
        }
        // 2 layers × (q, k, v) × (weight, bias).
        assert_eq!(grouped, 12);
        assert_eq!(hf.summary.ratio_groups, fused.summary.ratio_groups);

        // Ungrouped, the separate q/k/v ratios are not the fused one.
        let plain = analyze_files(
            Some(&fixture("hf_w0.safetensors")),
            &models(n, "hf_"),
            &MergeOptions::default(),
        )
        .expect("ungrouped");
        let q = "vision_model.encoder.layers.0.self_attn.q_proj.weight";
        let t_plain = by_name(&plain)[q].t.expect("t");
        let t_fused = fused_lines["visual.transformer.resblocks.0.attn.in_proj_weight"]
            .t
            .expect("t");
        assert!((t_plain - t_fused).abs() > 1e-3, "{t_plain} vs {t_fused}");
    }
}
