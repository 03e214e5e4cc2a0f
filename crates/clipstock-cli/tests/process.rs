//! The process around the work: closed or full stdout/stderr, two processes on one run
//! directory, temporaries that killed processes left, and the signals a scheduler sends.

mod common;
use common::{assert_fails_with, assert_ok, clipstock, root, wait_for_step};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A PID no process can have (above the kernel's limit of 2^22).
const DEAD_PID: u32 = 4_194_999;

/// The small quickstart of tests/common, without evaluations except the last.
fn small_quickstart(out: &Path, name: &str) -> Vec<String> {
    common::small_quickstart(
        out,
        name,
        &[
            "eval.every_epochs=0",
            "eval.zero_shot=false",
            "eval.runs=false",
        ],
    )
}

fn spawn(args: &[String], stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_clipstock"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn")
}

/// A pipe whose read end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

/// `/dev/full`: every write fails with ENOSPC.
fn full() -> Stdio {
    Stdio::from(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

fn run_with(args: &[String], stdout: Stdio, stderr: Stdio) -> Output {
    spawn(args, stdout, stderr)
        .wait_with_output()
        .expect("wait")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn fixture(path: &str) -> String {
    root().join(path).to_string_lossy().into_owned()
}

fn kill(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

const FINAL_EXPORTS: [&str; 3] = [
    "merged_final.safetensors",
    "run_1_final.safetensors",
    "run_2_final.safetensors",
];

fn assert_same_exports(a: &Path, b: &Path, why: &str) {
    for f in FINAL_EXPORTS {
        let x = std::fs::read(a.join(f)).expect("an export");
        let y = std::fs::read(b.join(f)).expect("an export");
        assert!(x == y, "{f} differs {why}");
    }
}

#[test]
fn a_closed_or_full_stdout_or_stderr_never_stops_a_command() {
    let info = strings(&[
        "info",
        &fixture("crates/clipstock-model/tests/fixtures/openclip_tiny.safetensors"),
    ]);
    for (what, stdout) in [("closed", closed_pipe()), ("full", full())] {
        let out = run_with(&info, stdout, Stdio::piped());
        assert_ok(&out);
        assert!(
            out.stderr.is_empty(),
            "info, {what} stdout: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The error line itself must not panic either: exit 1, not 101.
    let missing = strings(&["info", "does/not/exist.safetensors"]);
    for stderr in [closed_pipe(), full()] {
        let out = run_with(&missing, Stdio::null(), stderr);
        assert_eq!(out.status.code(), Some(1));
    }

    // A merge whose stdout is closed still writes its output, report and plot.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = |f: &str| fixture(&format!("crates/clipstock-merge/tests/fixtures/{f}"));
    let out_path = dir.path().join("merged.safetensors");
    let plot = dir.path().join("plot.svg");
    let merge = strings(&[
        "merge",
        "--anchor",
        &m("w0.safetensors"),
        "--models",
        &m("model1.safetensors"),
        &m("model2.safetensors"),
        "--out",
        out_path.to_str().expect("utf8"),
        "--plot",
        plot.to_str().expect("utf8"),
    ]);
    let out = run_with(&merge, closed_pipe(), Stdio::piped());
    assert_ok(&out);
    assert!(
        out_path.is_file() && plot.is_file(),
        "the merge and its plot"
    );

    // A training run with both streams closed finishes, and its train.log has everything.
    let args = small_quickstart(dir.path(), "closed");
    let mut child = spawn(&args, closed_pipe(), closed_pipe());
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "train with closed stdout/stderr: {status}"
    );
    let run = dir.path().join("closed");
    for f in FINAL_EXPORTS {
        assert!(run.join(f).is_file(), "{f}");
    }
    let log = std::fs::read_to_string(run.join("train.log")).expect("train.log");
    assert!(
        log.contains("epoch=2") && log.contains("checkpoint"),
        "{log}"
    );
}

#[test]
fn one_process_per_run_directory_and_signals_checkpoint_with_their_exit_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    // The reference: uninterrupted.
    assert_ok(&clipstock(&small_quickstart(out, "straight")));

    // Two starts of one run name 0.05 s apart: exactly one runs, the other fails at once
    // naming the first one's PID, and the survivor's directory is its own.
    let args = small_quickstart(out, "raced");
    let first = spawn(&args, Stdio::piped(), Stdio::piped());
    std::thread::sleep(Duration::from_millis(50));
    let second = spawn(&args, Stdio::piped(), Stdio::piped());
    let (first_pid, second_pid) = (first.id(), second.id());
    let second_out = second.wait_with_output().expect("wait");
    let (loser, winner_pid, mut winner) = if second_out.status.success() {
        // The second got there first (the first was still reading its config).
        let first_out = first.wait_with_output().expect("wait");
        (first_out, second_pid, None)
    } else {
        (second_out, first_pid, Some(first))
    };
    assert_fails_with(&loser, &["in use", &format!("PID {winner_pid}")]);
    let metrics = out.join("raced/metrics.jsonl");
    if let Some(child) = winner.as_mut() {
        // While it trains, a --resume is refused too, naming the same PID.
        wait_for_step(&metrics, 1, child);
        let mut resume = args.clone();
        resume.push("--resume".into());
        assert_fails_with(
            &clipstock(&resume),
            &["in use", &format!("PID {winner_pid}")],
        );
        // SIGTERM, as a scheduler sends it: a checkpoint at the next step, then exit 143.
        kill(child, "TERM");
        let status = winner.take().expect("child").wait().expect("wait");
        assert_eq!(status.code(), Some(143), "SIGTERM");
        let latest = out.join("raced/checkpoints/latest.json");
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&latest).expect("a checkpoint"))
                .expect("json");
        assert!(state["finished"] == false && state["global_step"].as_u64() >= Some(1));
        assert!(!out.join("raced/merged_final.safetensors").exists());
    }
    // Leftovers of killed writers are removed by the resume, in one line; a live process's
    // temporary (our own PID) stays.
    let run = out.join("raced");
    let stale = [
        run.join(format!(".summary.csv.tmp{DEAD_PID}-0")),
        run.join(format!("checkpoints/.latest.json.tmp{DEAD_PID}-3")),
        run.join(format!("merges/.epoch_1.json.tmp{DEAD_PID}-1")),
    ];
    for p in &stale {
        std::fs::write(p, b"partial").expect("plant");
    }
    let live = run.join(format!(".results.md.tmp{}-0", std::process::id()));
    std::fs::write(&live, b"in progress").expect("plant");
    let mut resume = args.clone();
    resume.push("--resume".into());
    let resumed = clipstock(&resume);
    assert_ok(&resumed);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stale temporary"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("removed 3 stale temporary files of dead processes"),
        "{stderr}"
    );
    for p in &stale {
        assert!(!p.exists(), "{} must be removed", p.display());
    }
    assert!(live.exists());
    std::fs::remove_file(&live).expect("rm");
    assert_same_exports(
        &out.join("straight"),
        &run,
        "after the race (and a SIGTERM + resume)",
    );

    // SIGINT exits 130 and SIGHUP 129, each after its checkpoint.
    for (signal, code) in [("INT", 130), ("HUP", 129)] {
        let name = format!("sig{signal}");
        let args = small_quickstart(out, &name);
        let mut child = spawn(&args, Stdio::null(), Stdio::null());
        wait_for_step(&out.join(&name).join("metrics.jsonl"), 1, &mut child);
        kill(&child, signal);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert!(out.join(&name).join("checkpoints/latest.json").is_file());
        assert!(!out.join(&name).join("merged_final.safetensors").exists());
    }
}

#[test]
fn merge_removes_the_temporaries_of_dead_merges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys_tmp = dir.path().join("tmp");
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&sys_tmp).expect("mkdir");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let stale: [PathBuf; 2] = [
        out_dir.join(format!(".merged.safetensors.tmp{DEAD_PID}-0")),
        sys_tmp.join(format!("clipstock-{DEAD_PID}-abc")),
    ];
    std::fs::write(&stale[0], b"half a merge").expect("plant");
    std::fs::create_dir(&stale[1]).expect("plant");
    let m = |f: &str| fixture(&format!("crates/clipstock-merge/tests/fixtures/{f}"));
    let out = Command::new(env!("CARGO_BIN_EXE_clipstock"))
        .args([
            "merge",
            "--anchor",
            &m("w0.safetensors"),
            "--models",
            &m("model1.safetensors"),
            &m("model2.safetensors"),
            "--out",
            out_dir.join("merged.safetensors").to_str().expect("utf8"),
        ])
        .current_dir(root())
        .env("TMPDIR", &sys_tmp)
        .output()
        .expect("run");
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stale temporary"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("removed 2 stale temporary files of dead processes"),
        "{stderr}"
    );
    for p in &stale {
        assert!(!p.exists(), "{} must be removed", p.display());
    }
}
