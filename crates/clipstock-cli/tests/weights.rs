//! Weights that must never enter a model: a mis-shaped token embedding, a NaN anywhere, and a
//! checkpoint file changed after it was written. Each is one clear `error:` line, never a
//! panic deep inside burn.

mod common;
use common::{assert_fails_with, clipstock};

use std::path::{Path, PathBuf};

use clipstock_model::{DType, HostTensor, StateDict};

const QUICKSTART_MODEL: &str = "data/quickstart/tiny_clip.safetensors";

/// The quickstart model with `edit` applied, written to `dir/name`.
fn edited_model(dir: &Path, name: &str, edit: impl FnOnce(&mut StateDict)) -> PathBuf {
    let mut state = StateDict::read(&common::root().join(QUICKSTART_MODEL)).expect("read");
    edit(&mut state);
    let path = dir.join(name);
    state.write_safetensors(&path, None, None).expect("write");
    path
}

fn poison(state: &mut StateDict, name: &str, index: usize, value: f32) {
    state.get_mut(name).expect("tensor").data[index] = value;
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The quickstart config, small and quick (as tests/train.rs), on `weights`.
fn small_train(out: &Path, name: &str, weights: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        "configs/quickstart.toml".into(),
    ];
    let sets = [
        format!("run.name={name}"),
        format!("run.output_dir={}", out.display()),
        format!("data.root={}", out.join("data").display()),
        format!("model.weights={}", weights.display()),
        "data.train_limit=48".into(),
        "data.workers=2".into(),
        "optim.epochs=1".into(),
        "optim.batch_size=16".into(),
        "optim.warmup_steps=1".into(),
        "eval.limit_per_set=8".into(),
        "eval.sets=[\"imagenet\"]".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

#[test]
fn a_token_embedding_one_row_short_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let short = edited_model(tmp.path(), "short.safetensors", |sd| {
        let t = sd.get("token_embedding.weight").expect("tensor").clone();
        let width = t.shape[1];
        let rows = t.shape[0] - 1;
        let data = t.data[..rows * width].to_vec();
        sd.insert(
            "token_embedding.weight",
            HostTensor::new(vec![rows, width], t.dtype, data),
        );
    });
    let out = clipstock(&["info", &s(&short)]);
    assert_fails_with(&out, &["`token_embedding.weight`", "[49408, 32]"]);
    let head = tmp.path().join("head.safetensors");
    let out = clipstock(&[
        "zeroshot",
        "--weights",
        &s(&short),
        "--classes",
        "data/quickstart/classnames.json",
        "--templates",
        "data/quickstart/templates.json",
        "--out",
        &s(&head),
    ]);
    assert_fails_with(&out, &["`token_embedding.weight`"]);
    assert!(!head.exists());
}

#[test]
fn a_nan_in_the_text_tower_is_refused_by_every_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tensor = "transformer.resblocks.0.attn.in_proj_weight";
    let nan = edited_model(tmp.path(), "nan.safetensors", |sd| {
        poison(sd, tensor, 7, f32::NAN)
    });
    let needles = [tensor, "NaN", "index 7"];
    let w = s(&nan);
    let out_file = s(&tmp.path().join("out.safetensors"));
    let commands: [Vec<&str>; 5] = [
        vec!["info", &w],
        vec![
            "zeroshot",
            "--weights",
            &w,
            "--classes",
            "data/quickstart/classnames.json",
            "--templates",
            "data/quickstart/templates.json",
            "--out",
            &out_file,
        ],
        vec!["forward", "--weights", &w],
        vec![
            "export",
            "--weights",
            &w,
            "--naming",
            "hf",
            "--out",
            &out_file,
        ],
        vec!["eval", "--weights", &w, "--data-root", "target"],
    ];
    for args in commands {
        let out = clipstock(&args);
        assert_fails_with(&out, &needles);
    }
    let out = clipstock(&small_train(tmp.path(), "text-nan", &nan, &[]));
    assert_fails_with(&out, &needles);
    assert!(!tmp.path().join("out.safetensors").exists());
}

#[test]
fn a_nan_in_the_visual_tower_fails_at_load_not_at_the_first_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tensor = "visual.transformer.resblocks.0.mlp.c_fc.weight";
    let inf = edited_model(tmp.path(), "inf.safetensors", |sd| {
        poison(sd, tensor, 3, f32::INFINITY)
    });
    let out = clipstock(&small_train(tmp.path(), "visual-inf", &inf, &[]));
    assert_fails_with(&out, &[tensor, "inf", "index 3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("optim.lr"), "{stderr}");
    // A head file passed to `forward` is checked the same way.
    let mut head = clipstock_model::load::head_state(vec![0.5; 3 * 32], 3, 32);
    poison(&mut head, clipstock_model::load::HEAD_WEIGHT, 40, f32::NAN);
    let head_path = tmp.path().join("head.safetensors");
    head.write_safetensors(&head_path, Some(DType::F32), None)
        .expect("write");
    let out = clipstock(&[
        "forward",
        "--weights",
        QUICKSTART_MODEL,
        "--head",
        &s(&head_path),
    ]);
    assert_fails_with(&out, &["classification_head.weight", "NaN", "index 40"]);
}

/// A run that stops at its first step (lr 1e30 diverges) after its step-0 checkpoint: the
/// cheapest way to a resumable checkpoint.
fn diverging_run(out: &Path, name: &str) -> (Vec<String>, PathBuf) {
    let mut args = small_train(
        out,
        name,
        &common::root().join(QUICKSTART_MODEL),
        &[
            "optim.lr=1e30",
            "optim.grad_clip_norm=\"off\"",
            "eval.zero_shot=false",
        ],
    );
    assert_fails_with(&clipstock(&args), &["not finite"]);
    let run = out.join(name);
    let latest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/latest.json")).expect("latest.json"),
    )
    .expect("json");
    let dir = run
        .join("checkpoints")
        .join(latest["dir"].as_str().expect("dir"));
    args.push("--resume".into());
    (args, dir)
}

#[test]
fn a_flipped_bit_in_a_checkpoint_file_is_refused_on_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (resume, dir) = diverging_run(tmp.path(), "flip");
    // Unmodified, the resume passes the check and reaches training (which diverges again).
    assert_fails_with(&clipstock(&resume), &["not finite"]);

    let file = dir.join("run_1.bpk");
    let original = std::fs::read(&file).expect("read");
    let mut flipped = original.clone();
    let at = flipped.len() - 9;
    flipped[at] ^= 0x04;
    std::fs::write(&file, &flipped).expect("write");
    let out = clipstock(&resume);
    assert_fails_with(&out, &["run_1.bpk", "sha256"]);

    std::fs::write(&file, &original).expect("write");
    std::fs::write(dir.join("stray.bin"), b"x").expect("write");
    assert_fails_with(&clipstock(&resume), &["stray.bin"]);
}

#[test]
fn a_missing_checkpoint_file_is_one_readable_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (resume, dir) = diverging_run(tmp.path(), "missing");
    // As a checkpoint written before checksums existed: burn's loader meets the missing file.
    let latest_path = dir.join("../latest.json");
    let mut latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest_path).expect("read")).expect("json");
    latest.as_object_mut().expect("object").remove("checksums");
    std::fs::write(&latest_path, latest.to_string()).expect("write");
    std::fs::remove_file(dir.join("run_2.optim.bpk")).expect("remove");
    let out = clipstock(&resume);
    assert_fails_with(&out, &["run_2.optim.bpk", "No such file or directory"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("error line");
    assert!(!line.contains("Io("), "{line}");
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
}
