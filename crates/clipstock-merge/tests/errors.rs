//! Every failure names the file and/or tensor, and leaves no output (not even a temporary file)
//! behind.

mod common;

use std::path::{Path, PathBuf};

use clipstock_merge::{DType, MergeError, MergeOptions, Method, ReadMode, merge_files};
use common::{Edit, f32_raw, fixture, i64_raw, listing, rewrite_f32, write};

/// Runs a merge into `dir/out.safetensors` that must fail; checks `dir` is unchanged.
fn merge_fails(dir: &Path, anchor: Option<&Path>, models: &[PathBuf]) -> MergeError {
    merge_fails_with(dir, anchor, models, &MergeOptions::default())
}

fn merge_fails_with(
    dir: &Path,
    anchor: Option<&Path>,
    models: &[PathBuf],
    opts: &MergeOptions,
) -> MergeError {
    let before = listing(dir);
    let out = dir.join("out.safetensors");
    let err = merge_files(anchor, models, &out, opts).expect_err("merge must fail");
    assert_eq!(
        listing(dir),
        before,
        "a failed merge left files behind: {err}"
    );
    err
}

fn w0() -> PathBuf {
    fixture("w0.safetensors")
}

/// Writes model2 edited by `edit` to `dir/name`, merges it with model1 against w0, and returns
/// the error that merge must end with.
fn merge_edited_model2(
    dir: &Path,
    name: &str,
    edit: impl FnMut(&str, &mut Vec<usize>, &mut Vec<f32>) -> Edit,
) -> MergeError {
    let bad = dir.join(name);
    rewrite_f32(&fixture("model2.safetensors"), &bad, edit);
    merge_fails(dir, Some(&w0()), &[fixture("model1.safetensors"), bad])
}

#[test]
fn missing_tensor_names_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = merge_edited_model2(dir.path(), "lacks.safetensors", |name, _, _| {
        if name == "visual.proj" {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    let msg = err.to_string();
    assert!(matches!(err, MergeError::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("visual.proj") && msg.contains("lacks.safetensors"),
        "{msg}"
    );

    // An extra tensor in a model is just as much a mismatch.
    let err = merge_edited_model2(dir.path(), "extra.safetensors", |name, shape, data| {
        if name == "visual.proj" {
            Edit::Replace(f32_raw("visual.proj_extra", shape, data))
        } else {
            Edit::Keep
        }
    });
    assert!(err.to_string().contains("visual.proj"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor_shapes_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = merge_edited_model2(dir.path(), "reshaped.safetensors", |name, shape, _| {
        if name == "visual.proj" {
            shape.reverse();
        }
        Edit::Keep
    });
    let msg = err.to_string();
    assert!(matches!(err, MergeError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("visual.proj")
            && msg.contains("[16, 8]")
            && msg.contains("[8, 16]")
            && msg.contains("reshaped.safetensors")
            && msg.contains("w0.safetensors"),
        "{msg}"
    );
}

#[test]
fn nan_and_inf_weights_name_the_tensor_the_file_and_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, bad_value) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
        let poisoned = format!("poisoned{i}.safetensors");
        let err = merge_edited_model2(dir.path(), &poisoned, |name, _, data| {
            if name == "visual.transformer.resblocks.1.mlp.c_fc.weight" {
                data[37] = bad_value;
            }
            Edit::Keep
        });
        let msg = err.to_string();
        assert!(
            matches!(err, MergeError::NonFinite { index: 37, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("resblocks.1.mlp.c_fc.weight") && msg.contains(&format!("poisoned{i}")),
            "{msg}"
        );
    }
    // In the anchor, for a method without a statistics pass (found while writing).
    let bad_anchor = dir.path().join("bad_anchor.safetensors");
    rewrite_f32(&w0(), &bad_anchor, |name, _, data| {
        if name == "visual.conv1.weight" {
            data[0] = f32::NAN;
        }
        Edit::Keep
    });
    let opts = MergeOptions::new(Method::WiseFt { alpha: 0.5 });
    let err = merge_fails_with(
        dir.path(),
        Some(&bad_anchor),
        &[fixture("model1.safetensors")],
        &opts,
    );
    assert!(
        err.to_string().contains("visual.conv1.weight")
            && err.to_string().contains("bad_anchor.safetensors"),
        "{err}"
    );
}

#[test]
fn truncated_file_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixture("model2.safetensors")).expect("read");
    for (i, cut) in [bytes.len() - 100, 20, 5].into_iter().enumerate() {
        let bad = dir.path().join(format!("truncated{i}.safetensors"));
        std::fs::write(&bad, &bytes[..cut]).expect("write");
        for mode in [ReadMode::Auto, ReadMode::Read] {
            let opts = MergeOptions {
                read_mode: mode,
                ..MergeOptions::default()
            };
            let err = merge_fails_with(
                dir.path(),
                Some(&w0()),
                &[fixture("model1.safetensors"), bad.clone()],
                &opts,
            );
            let msg = err.to_string();
            assert!(matches!(err, MergeError::Format { .. }), "{msg}");
            assert!(
                msg.contains(&format!("truncated{i}.safetensors")) && msg.contains("truncated?"),
                "{msg}"
            );
        }
    }
    // Garbage that is not safetensors at all.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"PK\x03\x04 this is a zip, not safetensors").expect("write");
    let err = merge_fails(
        dir.path(),
        Some(&w0()),
        &[fixture("model1.safetensors"), junk],
    );
    assert!(err.to_string().contains("junk.safetensors"), "{err}");
}

#[test]
fn unwritable_output_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = [fixture("model1.safetensors"), fixture("model2.safetensors")];
    // Parent folder does not exist.
    let out = dir.path().join("no/such/dir/out.safetensors");
    let err = merge_files(Some(&w0()), &models, &out, &MergeOptions::default())
        .expect_err("missing folder");
    assert!(matches!(err, MergeError::Write { .. }), "{err}");
    assert!(
        err.to_string().contains("no/such/dir/out.safetensors"),
        "{err}"
    );

    // The output path is an existing folder: fails at the final rename, after all the work;
    // the temporary file must still be removed.
    let folder = dir.path().join("taken");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("keep.txt"), b"x").expect("write");
    let before = listing(dir.path());
    let err = merge_files(Some(&w0()), &models, &folder, &MergeOptions::default())
        .expect_err("output is a folder");
    assert!(matches!(err, MergeError::Write { .. }), "{err}");
    assert_eq!(listing(dir.path()), before);
    assert_eq!(listing(&folder), vec!["keep.txt".to_string()]);

    // Read-only folder (skipped as root, who may write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).expect("mkdir");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        if std::fs::write(ro.join("probe"), b"").is_err() {
            let err = merge_files(
                Some(&w0()),
                &models,
                &ro.join("out.safetensors"),
                &MergeOptions::default(),
            )
            .expect_err("read-only folder");
            assert!(err.to_string().contains("ro/out.safetensors"), "{err}");
            assert!(listing(&ro).is_empty());
        } else {
            eprintln!("note: running as a user who can write to a 0555 folder; skipped that case");
            let _ = std::fs::remove_file(ro.join("probe"));
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn too_few_models_or_no_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = merge_fails(dir.path(), Some(&w0()), &[fixture("model1.safetensors")]);
    let MergeError::TooFewModels { need, got, .. } = err else {
        panic!("{err}")
    };
    assert_eq!((need, got), (2, 1));
    assert!(err.to_string().contains("at least 2"), "{err}");
    let err = merge_fails(
        dir.path(),
        None,
        &[fixture("model1.safetensors"), fixture("model2.safetensors")],
    );
    assert!(matches!(err, MergeError::MissingAnchor { .. }), "{err}");
    let err = merge_fails_with(
        dir.path(),
        None,
        &[],
        &MergeOptions::new(Method::UniformSoup),
    );
    assert!(matches!(err, MergeError::TooFewModels { .. }), "{err}");
}

#[test]
fn output_must_not_be_an_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m1 = dir.path().join("m1.safetensors");
    std::fs::copy(fixture("model1.safetensors"), &m1).expect("copy");
    let before = std::fs::read(&m1).expect("read");
    let err = merge_files(
        Some(&w0()),
        &[m1.clone(), fixture("model2.safetensors")],
        &m1,
        &MergeOptions::default(),
    )
    .expect_err("overwrite input");
    assert!(matches!(err, MergeError::OutputIsInput { .. }), "{err}");
    assert_eq!(std::fs::read(&m1).expect("read"), before);
}

#[test]
fn bad_options_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = [fixture("model1.safetensors"), fixture("model2.safetensors")];
    let opts = MergeOptions {
        include: vec!["^visaul\\.".into()],
        ..MergeOptions::default()
    };
    let err = merge_fails_with(dir.path(), Some(&w0()), &models, &opts);
    assert!(matches!(err, MergeError::UnmatchedPattern { .. }), "{err}");
    assert!(err.to_string().contains("visaul"), "{err}");

    let opts = MergeOptions {
        exclude: vec!["([".into()],
        ..MergeOptions::default()
    };
    let err = merge_fails_with(dir.path(), Some(&w0()), &models, &opts);
    assert!(matches!(err, MergeError::Pattern { .. }), "{err}");

    let opts = MergeOptions {
        groups: vec![r"self_attn\.[qkv]_proj".into()],
        ..MergeOptions::default()
    };
    let err = merge_fails_with(dir.path(), Some(&w0()), &models, &opts);
    assert!(err.to_string().contains("member"), "{err}");

    let opts = MergeOptions {
        output_dtype: Some(DType::I64),
        ..MergeOptions::default()
    };
    let err = merge_fails_with(dir.path(), Some(&w0()), &models, &opts);
    assert!(matches!(err, MergeError::InvalidOption(_)), "{err}");

    let opts = MergeOptions::new(Method::WiseFt { alpha: f64::NAN });
    let err = merge_fails_with(dir.path(), Some(&w0()), &models[..1], &opts);
    assert!(err.to_string().contains("alpha"), "{err}");
}

#[test]
fn non_float_tensors_must_agree_and_dtypes_must_be_compatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |name: &str, ids: &[i64], w: f32| {
        let p = dir.path().join(name);
        write(
            &p,
            &[
                f32_raw("w", &[2], &[w, w + 1.0]),
                i64_raw("position_ids", &[3], ids),
            ],
        );
        p
    };
    let a = mk("a.safetensors", &[0, 1, 2], 0.0);
    let b = mk("b.safetensors", &[0, 1, 2], 1.0);
    let c = mk("c.safetensors", &[0, 1, 3], 2.0);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let err = merge_fails(out_dir.path(), Some(&a), &[b.clone(), c]);
    assert!(matches!(err, MergeError::NonFloatDiffers { .. }), "{err}");
    assert!(err.to_string().contains("position_ids"), "{err}");

    // An integer where the anchor has a float.
    let d = dir.path().join("d.safetensors");
    write(
        &d,
        &[
            i64_raw("w", &[2], &[1, 2]),
            i64_raw("position_ids", &[3], &[0, 1, 2]),
        ],
    );
    let err = merge_fails(out_dir.path(), Some(&a), &[b, d]);
    assert!(matches!(err, MergeError::DtypeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("I64"), "{err}");
}

#[test]
fn overflowing_extrapolation_is_an_error_not_inf() {
    // Exactly opposite deltas on huge weights: cos = −1, t ≈ −2e8, and with unequal norms
    // (mean ≠ w0) w0 + t·(mean − w0) ≈ 2e41 leaves f32's range.
    let dir = tempfile::tempdir().expect("tempdir");
    let w0v = [1e37f32, -1e37];
    let p = |name: &str, v: &[f32]| {
        let path = dir.path().join(name);
        write(&path, &[f32_raw("big", &[2], v)]);
        path
    };
    let a = p("w0.safetensors", &w0v);
    let m1 = p("m1.safetensors", &[w0v[0] + 4e33, w0v[1] - 4e33]);
    let m2 = p("m2.safetensors", &[w0v[0] - 2e33, w0v[1] + 2e33]);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let err = merge_fails(out_dir.path(), Some(&a), &[m1.clone(), m2.clone()]);
    assert!(matches!(err, MergeError::NonFiniteOutput { .. }), "{err}");
    assert!(
        err.to_string().contains("big") && err.to_string().contains("clamp_t"),
        "{err}"
    );
    // With clamp_t, t = 0 and the result is the anchor.
    let out = out_dir.path().join("ok.safetensors");
    merge_files(
        Some(&a),
        &[m1, m2],
        &out,
        &MergeOptions::new(Method::ModelStock { clamp_t: true }),
    )
    .expect("clamped merge");
    assert_eq!(common::load(&out)["big"].data, w0v.to_vec());
}
