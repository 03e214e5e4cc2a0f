//! f16 with one device per run reads each run's gradient norm only after every run's backward
//! pass is queued (so several GPUs keep computing); that reordering must not change a bit.

mod common;
use common::{options, spec};

use clipstock_train::{Quiet, train};

#[test]
fn deferred_f16_updates_on_per_run_devices_match_the_single_device_loop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f16 = [
        "optim.precision=\"f16\"".to_string(),
        "optim.epochs=2".into(),
        "eval.zero_shot=false".into(),
        "run.log_every_steps=1".into(),
    ];
    let mut per_run = f16.to_vec();
    per_run.push("run.devices=[\"cpu\", \"cpu\"]".into());
    for (name, extra) in [("one", &f16[..]), ("per-run", &per_run[..])] {
        train(
            &spec(tmp.path(), name, extra),
            &options(false, false),
            &mut Quiet,
        )
        .expect("train");
    }
    let read = |run: &str, f: &str| std::fs::read(tmp.path().join(run).join(f)).expect("file");
    for f in [
        "run_1_final.safetensors",
        "run_2_final.safetensors",
        "merged_final.safetensors",
    ] {
        assert!(read("one", f) == read("per-run", f), "{f} differs");
    }
    // The skipped first steps and the loss scales are the same too.
    let scales = |run: &str| -> Vec<String> {
        String::from_utf8(read(run, "metrics.jsonl"))
            .expect("utf-8")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "step")
            .map(|v| format!("{} {} {}", v["loss_scale"], v["skipped_steps"], v["loss"]))
            .collect()
    };
    let one = scales("one");
    assert!(
        one.first()
            .is_some_and(|s| s.starts_with("[32768.0,32768.0] [1,1]")),
        "the first step overflows in both runs: {one:?}"
    );
    assert_eq!(one, scales("per-run"));
}
