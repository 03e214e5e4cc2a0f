//! The baselines, the in-memory API, dtype handling, greedy soup over files and the report.

mod common;

use std::path::PathBuf;

use clipstock_merge::{
    Action, DType, Flag, GreedyCandidate, MergeError, MergeOptions, MergeReport, Method, ReadMode,
    SafetensorsFile, Tensor, TensorRef, Unselected, greedy_soup_files, merge_files, merge_tensors,
    model_stock_ratio, model_stock_tensor, wise_ft_files,
};
use common::{Edit, assert_close, bf16_raw, f32_raw, fixture, i64_raw, load, rewrite_f32, write};
use safetensors::Dtype;

fn w0() -> PathBuf {
    fixture("w0.safetensors")
}

fn model(i: usize) -> PathBuf {
    fixture(&format!("model{i}.safetensors"))
}

#[test]
fn uniform_soup_is_the_mean_and_needs_no_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("soup.safetensors");
    let opts = MergeOptions::new(Method::UniformSoup);
    let report = merge_files(None, &[model(1), model(2), model(3)], &out, &opts).expect("soup");
    assert_eq!(report.summary.method, "uniform_soup");
    assert!(
        report
            .tensors
            .iter()
            .all(|t| t.t == Some(1.0) && t.cos.is_none())
    );
    let got = load(&out);
    let ms: Vec<_> = (1..=3).map(|i| load(&model(i))).collect();
    for (name, g) in &got {
        let want: Vec<f32> = (0..g.data.len())
            .map(|k| {
                let s: f64 = ms.iter().map(|m| f64::from(m[name].data[k])).sum();
                (s / 3.0) as f32
            })
            .collect();
        assert_close(name, &g.data, &want, 1e-7, 0.0);
    }
}

#[test]
fn wise_ft_endpoints_are_exact_and_one_file_per_alpha() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outputs: Vec<(f64, PathBuf)> = [0.0, 0.5, 1.0]
        .iter()
        .map(|a| (*a, dir.path().join(format!("wise_{a}.safetensors"))))
        .collect();
    let reports =
        wise_ft_files(&w0(), &[model(1)], &outputs, &MergeOptions::default()).expect("wise-ft");
    assert_eq!(reports.len(), 3);
    let (a, m) = (load(&w0()), load(&model(1)));
    let at = |i: usize| load(&outputs[i].1);
    for (name, t) in at(0) {
        assert_eq!(t.data, a[&name].data, "alpha 0 is w0: {name}");
    }
    for (name, t) in at(2) {
        assert_eq!(t.data, m[&name].data, "alpha 1 is w1: {name}");
    }
    for (name, t) in at(1) {
        let want: Vec<f32> = a[&name]
            .data
            .iter()
            .zip(&m[&name].data)
            .map(|(x, y)| (0.5 * f64::from(*x) + 0.5 * f64::from(*y)) as f32)
            .collect();
        assert_close(&name, &t.data, &want, 1e-7, 0.0);
    }
    assert_eq!(reports[1].tensors[0].t, Some(0.5));
}

#[test]
fn task_arithmetic_adds_scaled_deltas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("ta.safetensors");
    let opts = MergeOptions::new(Method::TaskArithmetic { lambda: 0.3 });
    merge_files(Some(&w0()), &[model(1), model(2)], &out, &opts).expect("task arithmetic");
    let (a, m1, m2, got) = (load(&w0()), load(&model(1)), load(&model(2)), load(&out));
    let name = "visual.transformer.resblocks.0.mlp.c_fc.weight";
    let want: Vec<f32> = (0..a[name].data.len())
        .map(|k| {
            let w = f64::from(a[name].data[k]);
            let d = f64::from(m1[name].data[k]) - w + f64::from(m2[name].data[k]) - w;
            (w + 0.3 * d) as f32
        })
        .collect();
    assert_close(name, &got[name].data, &want, 1e-6, 1e-9);
}

#[test]
fn unselected_tensors_can_stay_at_the_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let opts = MergeOptions {
        exclude: vec!["^token_embedding".into(), "^logit_scale$".into()],
        unselected: Unselected::Anchor,
        ..MergeOptions::default()
    };
    let report = merge_files(Some(&w0()), &[model(1), model(2)], &out, &opts).expect("merge");
    let line = report
        .tensors
        .iter()
        .find(|t| t.name == "token_embedding.weight")
        .expect("line");
    assert_eq!(line.action, Action::Anchor);
    assert!(line.has(Flag::Unselected));
    assert_eq!(report.summary.anchor_kept, 2);
    assert_eq!(
        load(&out)["token_embedding.weight"].data,
        load(&w0())["token_embedding.weight"].data
    );
}

#[test]
fn mixed_input_dtypes_compute_in_f32_and_write_the_anchor_dtype() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m2_bf16 = dir.path().join("m2_bf16.safetensors");
    rewrite_f32(&model(2), &m2_bf16, |name, shape, data| {
        Edit::Replace(bf16_raw(name, shape, data))
    });
    let out = dir.path().join("m.safetensors");
    let report = merge_files(
        Some(&w0()),
        &[model(1), m2_bf16.clone()],
        &out,
        &MergeOptions::default(),
    )
    .expect("merge");
    assert!(report.tensors.iter().all(|t| t.has(Flag::MixedDtype)));
    let got = load(&out);
    assert!(got.values().all(|t| t.dtype == Dtype::F32));

    // Same as merging in memory the bf16 values widened to f32.
    let as_tensors = |p: &PathBuf| -> Vec<Tensor> {
        load(p)
            .into_iter()
            .map(|(name, t)| Tensor {
                name,
                shape: t.shape,
                data: t.data,
            })
            .collect()
    };
    let (a, m1, m2) = (
        as_tensors(&w0()),
        as_tensors(&model(1)),
        as_tensors(&m2_bf16),
    );
    fn refs(v: &[Tensor]) -> Vec<TensorRef<'_>> {
        v.iter().map(Tensor::as_ref).collect()
    }
    let (ar, m1r, m2r) = (refs(&a), refs(&m1), refs(&m2));
    let (mem, _) =
        merge_tensors(Some(&ar), &[&m1r, &m2r], &MergeOptions::default()).expect("in-memory merge");
    for t in &mem {
        assert_eq!(got[&t.name].data, t.data, "{}", t.name);
    }

    // Output dtype override.
    let out16 = dir.path().join("m16.safetensors");
    let opts = MergeOptions {
        output_dtype: Some(DType::F16),
        ..MergeOptions::default()
    };
    let report = merge_files(Some(&w0()), &[model(1), m2_bf16], &out16, &opts).expect("merge");
    assert!(report.tensors.iter().all(|t| t.out_dtype == DType::F16));
    let got16 = load(&out16);
    for (name, t) in &got16 {
        assert_eq!(t.dtype, Dtype::F16, "{name}");
        assert_close(name, &t.data, &got[name].data, 1e-3, 1e-4);
    }
}

/// A 16-bit anchor gives an f32 merge unless a dtype is asked for (the official notebook's
/// merge is f32; rounding the result back to bf16 would undo part of what the ratio did).
#[test]
fn bf16_anchor_merges_to_f32_unless_asked_and_integers_are_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |name: &str, w: &[f32]| {
        let p = dir.path().join(name);
        write(
            &p,
            &[
                bf16_raw("w", &[4], w),
                i64_raw("position_ids", &[1, 3], &[0, 1, 2]),
            ],
        );
        p
    };
    let a = mk("a.safetensors", &[1.0, 2.0, 3.0, 4.0]);
    let b = mk("b.safetensors", &[1.5, 2.0, 3.0, 4.5]);
    let c = mk("c.safetensors", &[1.5, 2.5, 3.0, 4.0]);
    let out = dir.path().join("out.safetensors");
    let report = merge_files(
        Some(&a),
        &[b.clone(), c.clone()],
        &out,
        &MergeOptions::default(),
    )
    .expect("merge");
    let got = load(&out);
    assert_eq!(got["w"].dtype, Dtype::F32);
    let kept = dir.path().join("kept.safetensors");
    let opts = MergeOptions {
        output_dtype: Some(DType::BF16),
        ..MergeOptions::default()
    };
    merge_files(Some(&a), &[b, c], &kept, &opts).expect("merge to bf16");
    let k = load(&kept);
    assert_eq!(k["w"].dtype, Dtype::BF16);
    assert_eq!(k["position_ids"].dtype, Dtype::I64);
    let ids = report
        .tensors
        .iter()
        .find(|t| t.name == "position_ids")
        .expect("ids line");
    assert_eq!(ids.action, Action::Copied);
    assert!(ids.has(Flag::NotFloat));
    let bytes = std::fs::read(&out).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("load");
    let v = st.tensor("position_ids").expect("ids");
    assert_eq!(v.dtype(), Dtype::I64);
    assert_eq!(v.shape(), &[1, 3]);
    assert_eq!(
        v.data(),
        &[0i64, 1, 2]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>()[..]
    );
}

/// The cosine's lower bound: with two exactly opposite deltas t ≈ −2e8 but stays finite, and
/// clamp_t turns it into "keep w0".
#[test]
fn opposite_deltas_give_finite_values() {
    let w0 = [0.5f32, -0.25, 1.0, 2.0];
    let d = [0.125f32, -0.5, 0.25, 0.0];
    let w1: Vec<f32> = w0.iter().zip(&d).map(|(a, b)| a + b).collect();
    let w2: Vec<f32> = w0.iter().zip(&d).map(|(a, b)| a - b).collect();
    let (out, r) = model_stock_tensor("w", &w0, &[&w1, &w2], false).expect("merge");
    let t = r.t.expect("t");
    // cos = −1 + 1e-8/‖d‖² (the epsilon), so 1 + cos + 1e-8 ≈ 4e-8 here and t ≈ −5e7.
    assert!(t.is_finite() && t < -1e7, "{t}");
    assert!((r.cos.expect("cos") + 1.0).abs() < 1e-7);
    assert!(r.has(Flag::NegativeCos));
    // The deltas cancel exactly in the mean, so even this t returns w0.
    assert_eq!(out, w0.to_vec());
    assert!((model_stock_ratio(2, r.cos.expect("cos")) - t).abs() < 1e-6 * t.abs());
    let (out, r) = model_stock_tensor("w", &w0, &[&w1, &w2], true).expect("merge");
    assert_eq!(r.t, Some(0.0));
    assert_eq!(out, w0.to_vec());
}

/// Tensors longer than a chunk and an output window, merged in memory, against a plain
/// sequential implementation of the formula.
#[test]
fn large_tensors_stream_through_chunks_and_windows() {
    let numel = 2_500_003;
    let gen_ = |seed: u64, scale: f32| -> Vec<f32> {
        let mut x = seed;
        (0..numel)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    };
    let w0 = gen_(1, 1.0);
    let shared = gen_(2, 0.01);
    let ms: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            let noise = gen_(10 + i, 0.01);
            w0.iter()
                .zip(&shared)
                .zip(&noise)
                .map(|((a, s), n)| a + s + n)
                .collect()
        })
        .collect();
    let mrefs: Vec<&[f32]> = ms.iter().map(Vec::as_slice).collect();
    let (out, r) = model_stock_tensor("big", &w0, &mrefs, false).expect("merge");

    let deltas: Vec<Vec<f64>> = ms
        .iter()
        .map(|m| m.iter().zip(&w0).map(|(a, b)| f64::from(a - b)).collect())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut cos = 0.0;
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        cos += dot(&deltas[i], &deltas[j])
            / ((dot(&deltas[i], &deltas[i]) * dot(&deltas[j], &deltas[j])).sqrt() + 1e-8);
    }
    cos /= 3.0;
    let t = 3.0 * cos / (2.0 * cos + 1.0 + 1e-8);
    assert!((r.t.expect("t") - t).abs() < 1e-9, "{:?} vs {t}", r.t);
    let want: Vec<f32> = (0..numel)
        .map(|k| {
            let mean = ms.iter().map(|m| f64::from(m[k])).sum::<f64>() / 3.0;
            (t * mean + (1.0 - t) * f64::from(w0[k])) as f32
        })
        .collect();
    assert_close("big", &out, &want, 1e-6, 1e-9);
    // And through a file, with both read modes.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = std::iter::once(&w0)
        .chain(&ms)
        .enumerate()
        .map(|(i, v)| {
            let p = dir.path().join(format!("{i}.safetensors"));
            write(&p, &[f32_raw("big", &[numel], v)]);
            p
        })
        .collect();
    for mode in [ReadMode::Mmap, ReadMode::Read] {
        let out_path = dir.path().join("out.safetensors");
        let opts = MergeOptions {
            read_mode: mode,
            ..MergeOptions::default()
        };
        merge_files(Some(&paths[0]), &paths[1..], &out_path, &opts).expect("file merge");
        let f = SafetensorsFile::open(&out_path, mode).expect("open");
        assert_eq!(f.is_mapped(), mode == ReadMode::Mmap);
        assert_eq!(f.read_f32("big").expect("read"), out);
    }
}

#[test]
fn in_memory_inputs_are_validated() {
    let a = [1.0f32, 2.0];
    let short = [1.0f32];
    let shape = [2usize];
    let anchor = [TensorRef {
        name: "w",
        shape: &shape,
        data: &a,
    }];
    let bad = [TensorRef {
        name: "w",
        shape: &shape,
        data: &short,
    }];
    let err = merge_tensors(Some(&anchor), &[&anchor, &bad], &MergeOptions::default())
        .expect_err("length");
    assert!(matches!(err, MergeError::LengthMismatch { .. }), "{err}");
    assert!(err.to_string().contains("model 2"), "{err}");
    let dup = [anchor[0], anchor[0]];
    let err = merge_tensors(Some(&dup), &[&anchor, &anchor], &MergeOptions::default())
        .expect_err("duplicate");
    assert!(matches!(err, MergeError::DuplicateTensor { .. }), "{err}");
    let err = model_stock_tensor("w", &a, &[&a, &short], false).expect_err("length");
    assert!(err.to_string().contains("model 2"), "{err}");
}

#[test]
fn greedy_soup_over_files_writes_the_final_soup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let candidate = dir.path().join("candidate.safetensors");
    let out = dir.path().join("greedy.safetensors");
    let models = [model(1), model(2), model(3)];
    // Score a soup by how close its head is to model 3's: the soup of {3} alone is best, adding
    // anything moves away, so nothing is added.
    let target = load(&model(3))["classification_head.weight"].data.clone();
    let mut evaluated = Vec::new();
    let score = |p: &std::path::Path| -> f64 {
        let h = &load(p)["classification_head.weight"].data;
        -h.iter()
            .zip(&target)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
    };
    let (soup, report) = greedy_soup_files(
        &models,
        &[0.5, 0.6, 0.9],
        &candidate,
        &out,
        &MergeOptions::default(),
        |p, cand: &GreedyCandidate| -> Result<f64, MergeError> {
            evaluated.push(cand.ingredients.clone());
            Ok(0.9 + score(p))
        },
    )
    .expect("greedy soup");
    assert_eq!(soup.order, vec![2, 1, 0]);
    assert_eq!(evaluated, vec![vec![2, 1], vec![2, 0]]);
    assert_eq!(soup.ingredients, vec![2]);
    assert_eq!(report.summary.n_models, 1);
    assert!(!candidate.exists());
    assert_eq!(load(&out), load(&model(3)));
}

#[test]
fn report_round_trips_through_json_and_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let opts = MergeOptions {
        include: vec![r"^visual\.".into()],
        ..MergeOptions::default()
    };
    let report = merge_files(Some(&w0()), &[model(1), model(2)], &out, &opts).expect("merge");
    let json = dir.path().join("report.json");
    report.write_json(&json).expect("write json");
    let back = MergeReport::read_json(&json).expect("read json");
    // serde_json parses floats to within an ulp (exact parsing is an opt-in feature we do
    // not need for a report), so compare floats with a tolerance, everything else exactly.
    let near = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-14 * y.abs().max(1.0),
        (x, y) => x == y,
    };
    assert_eq!(back.tensors.len(), report.tensors.len());
    for (b, r) in back.tensors.iter().zip(&report.tensors) {
        assert_eq!(
            (
                &b.name,
                &b.group,
                &b.shape,
                b.action,
                &b.flags,
                b.dtype,
                b.out_dtype
            ),
            (
                &r.name,
                &r.group,
                &r.shape,
                r.action,
                &r.flags,
                r.dtype,
                r.out_dtype
            )
        );
        assert!(near(b.t, r.t) && near(b.cos, r.cos) && near(b.angle_deg, r.angle_deg));
        assert_eq!(b.delta_norms.len(), r.delta_norms.len());
        for (x, y) in b.delta_norms.iter().zip(&r.delta_norms) {
            assert!(near(Some(*x), Some(*y)));
        }
    }
    assert_eq!(back.summary.options, report.summary.options);
    assert_eq!(back.summary.merged, report.summary.merged);
    assert!(near(back.summary.t_mean, report.summary.t_mean));
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(v["summary"]["options"]["method"]["name"], "model_stock");
    assert_eq!(v["summary"]["n_models"], 2);
    let first = &v["tensors"][0];
    for key in [
        "name",
        "numel",
        "cos",
        "angle_deg",
        "t",
        "delta_norms",
        "flags",
        "action",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    let text = report.summary_text();
    assert!(text.contains("Model Stock of 2 model(s)"), "{text}");
    assert!(text.contains("plain average"), "{text}");
    let table = report.table_text();
    assert!(table.contains("classification_head.weight") && table.contains("averaged"));
    assert_eq!(table.lines().count(), report.tensors.len() + 1);
    // Options parse back from their JSON form, strictly.
    let o: MergeOptions = serde_json::from_value(v["summary"]["options"].clone()).expect("options");
    assert_eq!(o, opts);
    assert!(
        serde_json::from_str::<MergeOptions>(r#"{"metod": {"name": "uniform_soup"}}"#).is_err()
    );
}
