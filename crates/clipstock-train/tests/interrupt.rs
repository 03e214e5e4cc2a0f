//! Stop requests (Ctrl-C) in process. While a run is being set up — the zero-shot head,
//! decoding the evaluation sets — the call ends at once: a fresh start leaves no run directory,
//! a resume leaves its checkpoints as they were. Later, the run checkpoints and a resume ends
//! bitwise equal to an uninterrupted run: mid-epoch with f16's loss scale, and during the last
//! epoch's evaluations of a run and of the merge (nothing evaluated or merged twice).

mod common;
use common::{options, root, spec};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clipstock_data::layouts::SetName;
use clipstock_train::{Event, Observer, Outcome, Quiet, TrainError, train};

fn assert_interrupted_before_start(r: clipstock_train::Result<Outcome>, resume: bool) {
    match r {
        Err(TrainError::InterruptedBeforeStart { resume: r }) => assert_eq!(r, resume),
        Err(e) => panic!("expected an interruption before the start, got: {e}"),
        Ok(_) => panic!("expected an interruption before the start, the run finished"),
    }
}

/// Records the phases it hears and raises the stop flag at the first event `when` picks.
struct StopAt<F: Fn(&Event) -> bool> {
    stop: Arc<AtomicBool>,
    when: F,
    phases: Vec<String>,
}

impl<F: Fn(&Event) -> bool> Observer for StopAt<F> {
    fn on(&mut self, event: Event) {
        if let Event::Phase(p) = &event {
            self.phases.push(p.clone());
        }
        if (self.when)(&event) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_stop_while_building_the_zero_shot_head_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(tmp.path(), "head", &[]);
    let opts = options(false, false);
    let mut obs = StopAt {
        stop: opts.stop.clone(),
        when: |e: &Event| matches!(e, Event::Phase(p) if p.contains("zero-shot head")),
        phases: Vec::new(),
    };
    assert_interrupted_before_start(train(&s, &opts, &mut obs), false);
    assert!(!tmp.path().join("head").exists());
    assert!(
        !obs.phases.iter().any(|p| p.contains("evaluation sets")),
        "the head's own loop must stop: {:?}",
        obs.phases
    );
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

/// Trains `extra` once straight and once stopped where `when` says, then resumed; asserts the
/// exports are bitwise equal and that metrics.jsonl holds each evaluation and merge once, as
/// the straight run's does.
fn stop_and_resume_matches_straight(name: &str, extra: &[String], when: impl Fn(&Event) -> bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = spec(tmp.path(), &format!("{name}-straight"), extra);
    train(&straight, &options(false, false), &mut Quiet).expect("straight run");

    let s = spec(tmp.path(), name, extra);
    let opts = options(false, false);
    let mut obs = StopAt {
        stop: opts.stop.clone(),
        when,
        phases: Vec::new(),
    };
    let stopped = train(&s, &opts, &mut obs).expect("stopped run");
    assert!(stopped.stopped_early, "the stop request was not honoured");
    let resumed = train(&s, &options(true, false), &mut Quiet).expect("resume");
    assert!(!resumed.stopped_early);

    let read = |run: &str, f: &str| std::fs::read(tmp.path().join(run).join(f)).expect("file");
    let reference = format!("{name}-straight");
    for f in [
        "w0.safetensors",
        "run_1_final.safetensors",
        "run_2_final.safetensors",
        "merged_final.safetensors",
        "independent_1_final.safetensors",
    ] {
        if !tmp.path().join(&reference).join(f).exists() {
            continue;
        }
        assert!(read(&reference, f) == read(name, f), "{name}: {f} differs");
    }
    let records = |run: &str| -> Vec<String> {
        String::from_utf8(read(run, "metrics.jsonl"))
            .expect("utf-8")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "eval" || v["kind"] == "merge")
            .map(|v| format!("{} {} {}", v["kind"], v["epoch"], v["model"]))
            .collect()
    };
    assert_eq!(records(&reference), records(name), "{name}");
}

#[test]
fn an_f16_run_stopped_mid_epoch_resumes_with_its_loss_scale() {
    // Two epochs of two steps; the first steps overflow at the initial scale and are skipped,
    // so a resume that forgot the halved scales would skip again and end elsewhere.
    let extra = [
        "optim.precision=\"f16\"".to_string(),
        "optim.epochs=2".into(),
        "eval.zero_shot=false".into(),
    ];
    stop_and_resume_matches_straight("f16", &extra, |e| {
        matches!(e, Event::Step { global_step: 3, .. })
    });
}

#[test]
fn a_stop_during_a_runs_evaluation_redoes_only_the_unfinished_ones() {
    let extra = ["eval.zero_shot=false".to_string()];
    stop_and_resume_matches_straight(
        "run-eval",
        &extra,
        |e| matches!(e, Event::EvalSet { model, .. } if model == "run 2 (seed 2)"),
    );
}

#[test]
fn a_stop_during_the_last_merged_evaluation_resumes_without_merging_again() {
    let extra = ["eval.zero_shot=false".to_string()];
    stop_and_resume_matches_straight(
        "merged-eval",
        &extra,
        |e| matches!(e, Event::EvalSet { model, set: SetName::ImageNetV2, .. } if model == "merged"),
    );
}

/// The recipe options of the baselines (RandAugment, mixup, a linear-probe head, an independent
/// run, a held-out split) keep the resume invariant: every random choice depends on (seed,
/// epoch, sample index), the probe is kept in the run directory, so a resume ends bitwise
/// where an uninterrupted run ends.
#[test]
fn randaugment_mixup_linear_probe_and_baselines_resume_bitwise() {
    let extra = [
        "data.augment.randaugment={ n = 2, m = 9 }".to_string(),
        "optim.mixup_alpha=0.4".into(),
        "model.head=\"linear_probe\"".into(),
        "model.linear_probe={ epochs = 2, lr = 0.01, batch_size = 8 }".into(),
        "baselines.independent_seeds=[11]".into(),
        "data.holdout_per_class=3".into(),
        "optim.epochs=2".into(),
        "eval.zero_shot=false".into(),
    ];
    stop_and_resume_matches_straight("recipe", &extra, |e| {
        matches!(e, Event::Step { global_step: 3, .. })
    });
}

#[test]
fn the_linear_probe_head_is_w0s_and_differs_from_the_zero_shot_head() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = spec(
        tmp.path(),
        "probe",
        &[
            "model.head=\"linear_probe\"".to_string(),
            "model.linear_probe={ epochs = 3, lr = 0.01, batch_size = 8 }".into(),
            "eval.zero_shot=false".into(),
        ],
    );
    train(&s, &options(false, false), &mut Quiet).expect("train");
    let dir = tmp.path().join("probe");
    let probed = clipstock_model::StateDict::read(&dir.join("linear_probe_head.safetensors"))
        .expect("probed head");
    let w0 = clipstock_model::Checkpoint::read(&dir.join("w0.safetensors")).expect("w0");
    let q = root().join("data/quickstart");
    let zs = clipstock_model::zeroshot::zeroshot_head_from_files(
        &clipstock_model::Checkpoint::read(&q.join("tiny_clip.safetensors")).expect("ckpt"),
        &q.join("classnames.json"),
        &q.join("templates.json"),
        &burn::tensor::Device::flex(),
        None,
    )
    .expect("zero-shot head");
    let key = "classification_head.weight";
    let get = |sd: &clipstock_model::StateDict| sd.get(key).expect("head weight").data.clone();
    assert_eq!(get(&w0.state), get(&probed), "w0 carries the probed head");
    assert_ne!(get(&probed), get(&zs), "the probe trained the head");
}
