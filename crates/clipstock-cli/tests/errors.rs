//! Clear errors and usage errors (issue 13): the resume config diff, a moved run directory
//! that resumes, eval's counts that must be at least 1.

mod common;
use common::{assert_fails_with, assert_ok, clipstock, root, small_quickstart, wait_for_step};

use std::process::{Command, Stdio};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_resume_with_another_config_names_every_differing_key_with_both_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = [
        "optim.epochs=1",
        "eval.every_epochs=0",
        "eval.zero_shot=false",
    ];
    let args = small_quickstart(tmp.path(), "diff", &extra);
    assert_ok(&clipstock(&args));
    let mut changed = args.clone();
    changed.extend(
        [
            "--set",
            "optim.lr=0.5",
            "--set",
            "run.seeds=[7,8]",
            "--resume",
        ]
        .map(String::from),
    );
    let out = clipstock(&changed);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in 2 key(s)"), "{err}");
    assert!(
        err.contains("optim.lr: 0.0003 in the run, 0.5 now"),
        "{err}"
    );
    assert!(
        err.contains("run.seeds: [1, 2] in the run, [7, 8] now"),
        "{err}"
    );
}

#[test]
fn a_moved_run_directory_resumes_bitwise_equal_and_evaluates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = [
        "eval.every_epochs=0",
        "eval.zero_shot=false",
        "eval.runs=false",
        "data.train_limit=192",
        "optim.epochs=3",
    ];
    assert_ok(&clipstock(&small_quickstart(
        tmp.path(),
        "straight",
        &extra,
    )));

    let args = small_quickstart(tmp.path(), "killed", &extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_clipstock"))
        .args(&args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_step(&tmp.path().join("killed/metrics.jsonl"), 15, &mut child);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(tmp.path().join("killed/checkpoints/latest.json").is_file());

    // Moved and renamed: the old place no longer exists.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let moved = elsewhere.join("renamed");
    std::fs::rename(tmp.path().join("killed"), &moved).expect("mv");
    let resumed = clipstock(&[
        "train".to_string(),
        "--resume".into(),
        "--run".into(),
        moved.display().to_string(),
    ]);
    assert_ok(&resumed);
    assert!(
        !tmp.path().join("killed").exists(),
        "nothing written at the old place"
    );
    for f in [
        "merged_final.safetensors",
        "run_1_final.safetensors",
        "run_2_final.safetensors",
    ] {
        let a = std::fs::read(tmp.path().join("straight").join(f)).expect("straight export");
        let b = std::fs::read(moved.join(f)).expect("moved export");
        assert!(a == b, "{f} differs after moving and resuming");
    }

    // `--config DIR/config.toml --resume` means the same (here: the run is already finished,
    // so it is found and its finished state is reported, not "nothing to resume").
    let again = clipstock(&[
        "train".to_string(),
        "--config".into(),
        moved.join("config.toml").display().to_string(),
        "--resume".into(),
    ]);
    assert_ok(&again);

    let eval = clipstock(&[
        "eval".to_string(),
        "--run".into(),
        moved.display().to_string(),
        "--limit-per-set".into(),
        "8".into(),
        "--sets".into(),
        "imagenet".into(),
    ]);
    assert_ok(&eval);
    assert!(moved.join("eval.json").is_file());
}

#[test]
fn eval_counts_of_zero_are_usage_errors() {
    for (flag, value) in [("--limit-per-set", "0"), ("--batch-size", "0")] {
        let out = clipstock(&[
            "eval",
            "--weights",
            "does-not-matter.safetensors",
            "--data-root",
            "does-not-matter",
            flag,
            value,
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains("at least 1"), "{err}");
    }
}

#[test]
fn a_typo_in_the_run_file_keeps_its_line_under_set_and_a_bad_override_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("run.toml");
    let text = std::fs::read_to_string(root().join("configs/quickstart.toml")).expect("read");
    let text = text.replacen("[optim]\n", "[optim]\nlearning_rate = 1e-3\n", 1);
    let line = text
        .lines()
        .position(|l| l.starts_with("learning_rate"))
        .expect("inserted")
        + 1;
    std::fs::write(&file, &text).expect("write");
    let config = file.display().to_string();
    let out = clipstock(&["train", "--config", &config, "--set", "optim.epochs=1"]);
    assert_fails_with(
        &out,
        &[&format!("{config}:{line}:1"), "optim.learning_rate"],
    );
    let out = clipstock(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "optim.lr=abc",
    ]);
    assert_fails_with(&out, &["optim.lr", "(from --set optim.lr=abc)"]);
}
