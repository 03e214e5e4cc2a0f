//! A stop request (Ctrl-C) while a run is being set up — the zero-shot head, decoding the
//! evaluation sets — ends the call at once: a fresh start leaves no run directory, a resume
//! leaves its directory as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clipstock_config::RunSpec;
use clipstock_train::{Outcome, Quiet, TrainError, TrainOptions, train};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The quickstart config, tiny, with absolute paths (tests do not share a working directory).
fn spec(out: &Path, name: &str, extra: &[String]) -> RunSpec {
    let q = root().join("data/quickstart");
    let mut sets = vec![
        format!("run.name={name}"),
        format!("run.output_dir={}", out.display()),
        format!(
            "model.weights={}",
            q.join("tiny_clip.safetensors").display()
        ),
        format!("model.classnames={}", q.join("classnames.json").display()),
        format!("model.templates={}", q.join("templates.json").display()),
        format!("data.class_dir={}", q.display()),
        format!("data.root={}", out.join("data").display()),
        "data.train_limit=32".into(),
        "optim.epochs=1".into(),
        "optim.batch_size=16".into(),
        "eval.limit_per_set=8".into(),
    ];
    sets.extend_from_slice(extra);
    clipstock_config::load(&root().join("configs/quickstart.toml"), &sets).expect("config")
}

fn options(resume: bool, stop: bool) -> TrainOptions {
    TrainOptions {
        resume,
        stop: Arc::new(AtomicBool::new(stop)),
    }
}

fn assert_interrupted_before_start(r: clipstock_train::Result<Outcome>, resume: bool) {
    match r {
        Err(TrainError::InterruptedBeforeStart { resume: r }) => assert_eq!(r, resume),
        Err(e) => panic!("expected an interruption before the start, got: {e}"),
        Ok(_) => panic!("expected an interruption before the start, the run finished"),
    }
}

#[test]
fn a_stop_while_building_the_zero_shot_head_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(tmp.path(), "head", &[]);
    assert_interrupted_before_start(train(&s, &options(false, true), &mut Quiet), false);
    assert!(!tmp.path().join("head").exists());
}

#[test]
fn a_stop_while_decoding_the_evaluation_sets_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A head from a file: the first interruptible work is then the evaluation sets.
    let q = root().join("data/quickstart");
    let ckpt =
        clipstock_model::Checkpoint::read(&q.join("tiny_clip.safetensors")).expect("checkpoint");
    let head = clipstock_model::zeroshot::zeroshot_head_from_files(
        &ckpt,
        &q.join("classnames.json"),
        &q.join("templates.json"),
        &burn::tensor::Device::flex(),
        None,
    )
    .expect("head");
    let head_path = tmp.path().join("head.safetensors");
    head.write_safetensors(&head_path, None, None)
        .expect("write head");
    let s = spec(
        tmp.path(),
        "sets",
        &[format!("model.head={{file=\"{}\"}}", head_path.display())],
    );
    assert_interrupted_before_start(train(&s, &options(false, true), &mut Quiet), false);
    assert!(!tmp.path().join("sets").exists());
    // Without the stop the same config trains: the interruption was the only obstacle.
    train(&s, &options(false, false), &mut Quiet).expect("train");
}

#[test]
fn a_stop_while_resuming_leaves_the_run_directory_as_it_was() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(tmp.path(), "resume", &[]);
    train(&s, &options(false, false), &mut Quiet).expect("train");
    let dir = tmp.path().join("resume");
    let snapshot = |f: &str| std::fs::read(dir.join(f)).expect("run file");
    let before = (
        snapshot("checkpoints/latest.json"),
        snapshot("metrics.jsonl"),
    );
    assert_interrupted_before_start(train(&s, &options(true, true), &mut Quiet), true);
    let after = (
        snapshot("checkpoints/latest.json"),
        snapshot("metrics.jsonl"),
    );
    assert!(
        before == after,
        "an interrupted resume must not touch the run"
    );
}
