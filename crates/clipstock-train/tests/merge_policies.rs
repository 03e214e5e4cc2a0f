//! What a mid-training merge does to the runs, read back from the checkpoint taken right after
//! it: their weights (`after_merge`), their AdamW moments (`optimizer_state`) and the learning
//! rate that follows (the schedule is not restarted). Also the independent baselines, trained
//! in lockstep and never merged, and the held-out split.

mod common;
use common::{options, spec};

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clipstock_data::layouts::SetName;
use clipstock_model::load::module_state;
use clipstock_model::{ImageClassifier, StateDict};
use clipstock_train::rundir::Record;
use clipstock_train::schedule::cosine_lr;
use clipstock_train::{Event, Observer, Quiet, RunReader, train};

/// Stops the run once the first epoch's merge is done: its checkpoint then holds the runs as
/// they continue into epoch 2.
struct StopAfterFirstMerge(Arc<AtomicBool>);

impl Observer for StopAfterFirstMerge {
    fn on(&mut self, event: Event) {
        if matches!(event, Event::Merged { epoch: 1, .. }) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Two epochs, merged after the first, no evaluation before the end; stopped right after the
/// first merge. Returns the models of that checkpoint by label, and its folder.
fn after_first_merge(
    out: &Path,
    name: &str,
    extra: &[&str],
) -> (Vec<(String, ImageClassifier)>, std::path::PathBuf) {
    let mut sets: Vec<String> = vec![
        "optim.epochs=2".into(),
        "eval.every_epochs=0".into(),
        "eval.zero_shot=false".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let plan = spec(out, name, &sets);
    let opts = options(false, false);
    let mut obs = StopAfterFirstMerge(opts.stop.clone());
    let outcome = train(&plan, &opts, &mut obs).expect("train");
    assert!(outcome.stopped_early, "stopped after the first merge");
    let reader = RunReader::open(&out.join(name)).expect("run dir");
    assert_eq!(
        reader.state.epoch, 1,
        "the checkpoint is the one after epoch 1"
    );
    assert_eq!(reader.state.merges, 1);
    let models = reader
        .models(&burn::tensor::Device::flex(), &mut Quiet)
        .expect("models");
    let ckpt = out.join(name).join("checkpoints").join(&reader.state.dir);
    (models, ckpt)
}

fn state_of(models: &[(String, ImageClassifier)], label: &str) -> StateDict {
    let (_, m) = models
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no model `{label}` in {:?}", labels(models)));
    module_state(m)
}

fn labels(models: &[(String, ImageClassifier)]) -> Vec<&str> {
    models.iter().map(|(l, _)| l.as_str()).collect()
}

/// The AdamW moment tensors of one run's optimizer record, with their values.
fn moments(ckpt: &Path, run: usize) -> Vec<(String, Vec<u8>)> {
    let p = ckpt.join(format!("run_{run}.optim.bpk"));
    let reader = burn_pack::Reader::from_file(&p).expect("optimizer record");
    let names: Vec<String> = reader
        .tensor_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    names
        .into_iter()
        .map(|n| {
            let data = reader.tensor_data(&n).expect("tensor");
            (n, data)
        })
        .collect()
}

#[test]
fn reset_runs_puts_the_merge_into_every_run_and_evaluate_only_does_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (models, _) = after_first_merge(tmp.path(), "reset", &[]);
    let merged = state_of(&models, "merged");
    for label in ["run 1 (seed 1)", "run 2 (seed 2)"] {
        assert!(
            state_of(&models, label) == merged,
            "{label} must hold the merge bit for bit"
        );
    }

    let (models, _) = after_first_merge(
        tmp.path(),
        "evaluate_only",
        &["merge.after_merge=\"evaluate_only\""],
    );
    let merged = state_of(&models, "merged");
    let (r1, r2) = (
        state_of(&models, "run 1 (seed 1)"),
        state_of(&models, "run 2 (seed 2)"),
    );
    assert!(
        r1 != merged && r2 != merged,
        "evaluate_only leaves the runs their own weights"
    );
    assert!(r1 != r2);
}

#[test]
fn adamw_moments_survive_a_merge_under_keep_and_are_zero_under_reset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, ckpt) = after_first_merge(tmp.path(), "keep", &["merge.optimizer_state=\"keep\""]);
    for run in [1, 2] {
        let m = moments(&ckpt, run);
        assert!(!m.is_empty(), "run {run} keeps its moments");
        assert!(
            m.iter().any(|(_, d)| d.iter().any(|&b| b != 0)),
            "run {run}: the kept moments are not zero"
        );
    }

    let (_, ckpt) = after_first_merge(tmp.path(), "reset", &["merge.optimizer_state=\"reset\""]);
    for run in [1, 2] {
        // A fresh AdamW has no state: its first step starts from zero moments.
        let m = moments(&ckpt, run);
        let nonzero = m.iter().filter(|(_, d)| d.iter().any(|&b| b != 0)).count();
        assert_eq!(
            nonzero, 0,
            "run {run}: reset leaves no moments, found {m:?}"
        );
    }
}

#[test]
fn the_learning_rate_continues_its_schedule_across_a_merge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = spec(
        tmp.path(),
        "lr",
        &[
            "optim.epochs=2".into(),
            "optim.warmup_steps=1".into(),
            "optim.lr=1e-3".into(),
            "run.log_every_steps=1".into(),
            "eval.every_epochs=0".into(),
            "eval.zero_shot=false".into(),
        ],
    );
    train(&plan, &options(false, false), &mut Quiet).expect("train");
    let reader = RunReader::open(&tmp.path().join("lr")).expect("run dir");
    let records = reader.records().expect("records");
    let steps: Vec<(u64, u64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some((s.epoch, s.global_step, s.lr)),
            _ => None,
        })
        .collect();
    let merges = records
        .iter()
        .filter(|r| matches!(r, Record::Merge(_)))
        .count();
    assert_eq!(merges, 2, "one merge per epoch");
    let total = steps.len() as u64;
    assert!(total >= 4, "{steps:?}");
    for &(_, global_step, lr) in &steps {
        // The lr of the step that made `global_step` steps.
        let want = cosine_lr(global_step - 1, 1e-3, 1, total);
        assert_eq!(lr, want, "step {global_step}");
    }
    let last_of_1 = steps.iter().rfind(|s| s.0 == 1).expect("epoch 1");
    let first_of_2 = steps.iter().find(|s| s.0 == 2).expect("epoch 2");
    assert!(
        first_of_2.2 < last_of_1.2,
        "after the merge the cosine goes on down ({} then {}), no warm-up again",
        last_of_1.2,
        first_of_2.2
    );
}

/// An independent baseline is exactly the run it would be alone: its seed's data order, its
/// own AdamW, never touched by the merges of the runs beside it.
#[test]
fn independent_baselines_train_in_lockstep_and_are_never_merged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (models, _) = after_first_merge(
        tmp.path(),
        "with_baseline",
        &["baselines.independent_seeds=[11]"],
    );
    assert_eq!(
        labels(&models),
        [
            "zero-shot",
            "run 1 (seed 1)",
            "run 2 (seed 2)",
            "independent 1 (seed 11)",
            "merged"
        ]
    );
    let merged = state_of(&models, "merged");
    assert!(state_of(&models, "run 1 (seed 1)") == merged);
    let independent = state_of(&models, "independent 1 (seed 11)");
    assert!(independent != merged, "the baseline is not merged");

    // The same seed trained as a never-merged run of its own, one epoch each.
    let one_epoch = |name: &str, sets: &[&str]| {
        let mut all: Vec<String> =
            vec!["eval.every_epochs=0".into(), "eval.zero_shot=false".into()];
        all.extend(sets.iter().map(|s| s.to_string()));
        let plan = spec(tmp.path(), name, &all);
        train(&plan, &options(false, false), &mut Quiet).expect("train");
        StateDict::read(&tmp.path().join(name).join(format!(
            "{}_final.safetensors",
            if name == "lockstep" {
                "independent_1"
            } else {
                "run_1"
            }
        )))
        .expect("export")
    };
    let lockstep = one_epoch("lockstep", &["baselines.independent_seeds=[11]"]);
    let solo = one_epoch("solo", &["run.seeds=[11, 12]", "merge.method=\"none\""]);
    assert!(
        lockstep == solo,
        "the baseline equals seed 11 trained alone, bit for bit"
    );
    let dir = tmp.path().join("lockstep");
    let report = std::fs::read_to_string(dir.join("merges/epoch_001.json")).expect("report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(
        report["summary"]["n_models"], 2,
        "only the merged runs are merged"
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("csv");
    assert!(csv.starts_with("epoch,global_step,lr,loss_run_1,loss_run_2,loss_independent_1,"));
}

#[test]
fn the_held_out_split_is_never_trained_on_and_is_evaluated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = spec(
        tmp.path(),
        "holdout",
        &[
            "data.holdout_per_class=3".into(),
            "data.train_limit=10000".into(),
            "optim.batch_size=500".into(),
            "eval.zero_shot=true".into(),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let session = clipstock_train::session::Session::build(
        &plan,
        &stop,
        &clipstock_train::dist::Single,
        &mut Quiet,
    )
    .expect("session");
    train(&plan, &options(false, false), &mut Quiet).expect("train");
    let dir = tmp.path().join("holdout");
    let list = std::fs::read_to_string(dir.join("holdout.txt")).expect("holdout.txt");
    let held: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(held.len(), 3 * 10, "3 per class, 10 classes");
    let train_dir = session.train[0]
        .path
        .ancestors()
        .nth(2)
        .expect("train dir")
        .to_path_buf();
    let trained: HashSet<std::path::PathBuf> =
        session.train.iter().map(|s| s.path.clone()).collect();
    for h in &held {
        assert!(!trained.contains(&train_dir.join(h)), "{h} is trained on");
        assert!(train_dir.join(h).is_file(), "{h} is a training image");
    }
    let table = std::fs::read_to_string(dir.join("results.md")).expect("results");
    assert!(table.contains("held-out"), "{table}");
    let reader = RunReader::open(&dir).expect("run dir");
    for e in &reader.state.evals {
        let h = e
            .results
            .get(SetName::ImageNetHoldout)
            .expect("held-out row");
        assert_eq!(h.count, 30, "{}", e.model);
    }
    assert!(
        reader
            .state
            .evals
            .iter()
            .all(|e| e.results.ood_mean().map(|m| m.1) == Some(5)),
        "the held-out split is not a shift"
    );
}

/// mixup and RandAugment reach the trainer's step: each changes what is trained.
#[test]
fn mixup_and_randaugment_change_the_training() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, extra: &[&str]| {
        let mut sets: Vec<String> =
            vec!["eval.every_epochs=0".into(), "eval.zero_shot=false".into()];
        sets.extend(extra.iter().map(|s| s.to_string()));
        train(
            &spec(tmp.path(), name, &sets),
            &options(false, false),
            &mut Quiet,
        )
        .expect("train");
        std::fs::read(tmp.path().join(name).join("run_1_final.safetensors")).expect("export")
    };
    let plain = run("plain", &[]);
    assert!(plain == run("plain_again", &[]), "deterministic");
    assert!(
        plain != run("mixup", &["optim.mixup_alpha=0.4"]),
        "mixup changes the step"
    );
    assert!(
        plain
            != run(
                "randaugment",
                &["data.augment.randaugment={ n = 2, m = 9 }"]
            ),
        "RandAugment changes the batches"
    );
}
