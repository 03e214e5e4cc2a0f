//! What every CLI test binary needs: the repository root, running the built `clipstock` there,
//! and the two outcome checks (success, or exactly one clear `error:` line).

#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The results table's set columns and the OOD mean, in the paper's order.
pub const TABLE_COLUMNS: [&str; 7] = [
    "ImageNet",
    "IN-V2",
    "IN-Sketch",
    "IN-R",
    "ObjectNet",
    "IN-A",
    "avg shifts",
];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the binary from the repository root (the relative paths of the shipped configs).
pub fn clipstock<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipstock"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clipstock")
}

/// Succeeded; on failure the assertion shows what the command printed.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails with exactly one `error:` line on stderr that contains every `needle`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "`{n}` not in: {}", errors[0]);
    }
}

/// The quickstart config, made small: its own output folder and data tree (generated from the
/// shipped assets), few images, two epochs.
pub fn small_quickstart(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        "configs/quickstart.toml".into(),
    ];
    let data = out.join("data");
    let sets = [
        format!("run.name={name}"),
        format!("run.output_dir={}", out.display()),
        format!("data.root={}", data.display()),
        "data.train_limit=96".into(),
        "data.workers=2".into(),
        "optim.epochs=2".into(),
        "optim.batch_size=16".into(),
        "optim.warmup_steps=2".into(),
        "eval.limit_per_set=24".into(),
        "run.log_every_steps=1".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

/// Blocks until `metrics` records step `global_step` (panics if the child ends first).
pub fn wait_for_step(metrics: &Path, global_step: u64, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(metrics) {
            let reached = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| v["kind"] == "step" && v["global_step"].as_u64() >= Some(global_step));
            if reached {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("training ended before step {global_step}: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `metrics.jsonl` as comparable records: resume markers dropped, timings removed (what an
/// interruption or a split over processes cannot keep equal).
pub fn records(run_dir: &Path) -> Vec<serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("seconds");
                m.remove("images_per_sec");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines"))
        .filter(|v| v["kind"] != "resume")
        .map(|mut v| {
            strip(&mut v);
            v
        })
        .collect()
}
