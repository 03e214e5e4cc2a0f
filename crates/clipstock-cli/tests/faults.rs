//! The fault-injection suite: the small quickstart killed with SIGKILL at exact crash points
//! (mid-step, mid-evaluation, mid-merge, inside every atomic write, between a checkpoint
//! folder's rename and `latest.json`, …), on a full disk, and with its output streams closed,
//! then resumed. Each case must end with the same final exports, byte for byte, and the same
//! `metrics.jsonl`, record for record (timings and resume markers aside), as an uninterrupted
//! run, and leave no temporary file behind.
//!
//! The crash points are `clipstock_tensors::fault::point`s. An uninterrupted run lists the ones
//! it reaches and how often (`CLIPSTOCK_FAULT_LOG`); every case kills at one `(point,
//! occurrence)` (`CLIPSTOCK_FAULT_AT`). Every point is exercised on every run of the suite;
//! which occurrence is drawn from a seed: `CLIPSTOCK_FAULT_SEED`, else the commit being tested
//! (`git rev-parse HEAD`), so over the commits every occurrence gets its turn while any one
//! commit's run is reproducible. A failure prints the seed and the case.

mod common;
use common::{records, root};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The files a finished run writes that must not depend on how it got there.
const SAME_BYTES: [&str; 6] = [
    "merged_final.safetensors",
    "run_1_final.safetensors",
    "run_2_final.safetensors",
    "w0.safetensors",
    "results.md",
    "merges/epoch_001.json",
];

/// Every case's run has this name (in its own output folder), so `results.md` matches too.
const RUN: &str = "faulted";

/// The small quickstart of tests/common (2 epochs of 6 steps × 2 seeds, evaluations after
/// each epoch, one merge per epoch; about a second on 2 cores), its data tree shared by every
/// case (a later `--set` of a key replaces an earlier one).
fn quickstart_args(out: &Path, data: &Path) -> Vec<String> {
    let data = format!("data.root={}", data.display());
    common::small_quickstart(out, RUN, &[&data])
}

fn command(args: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clipstock"));
    c.args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env_remove("CLIPSTOCK_FAULT_AT")
        .env_remove("CLIPSTOCK_FAULT_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(args: &[String], env: &[(&str, String)]) -> Output {
    command(args, env).output().expect("run clipstock")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Finishes an interrupted run the way a user would: `--resume` when a checkpoint exists, a
/// fresh start otherwise (a run killed before its first checkpoint has nothing to resume, and
/// its remains are an abandoned start that the new start replaces).
fn finish(args: &[String], run_dir: &Path, env: &[(&str, String)]) -> Output {
    let mut args = args.to_vec();
    if run_dir.join("checkpoints/latest.json").is_file() {
        args.push("--resume".into());
    }
    run(&args, env)
}

/// The seed of this run of the suite (see the module docs).
fn suite_seed() -> u64 {
    if let Ok(s) = std::env::var("CLIPSTOCK_FAULT_SEED") {
        return s.trim().parse().expect("CLIPSTOCK_FAULT_SEED is a number");
    }
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| u64::from_str_radix(String::from_utf8_lossy(&o.stdout).get(..16)?, 16).ok())
        .unwrap_or(0)
}

/// How often each crash point was reached, from a `CLIPSTOCK_FAULT_LOG` file.
fn hit_counts(log: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(log).expect("the fault log");
    let mut counts = BTreeMap::new();
    for l in text.lines() {
        *counts.entry(l.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// `summary.csv` without its `seconds` column.
fn summary(run_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run_dir.join("summary.csv")).expect("summary.csv");
    text.lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_owned())
        .collect()
}

/// Names of temporary files and folders anywhere under `dir` (`.NAME.tmp<PID>-<N>`,
/// checkpoints' `.tmp-*`).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains("tmp") {
                found.push(e.path());
            } else if e.path().is_dir() {
                todo.push(e.path());
            }
        }
    }
    found
}

/// The uninterrupted run every case is compared with.
struct Reference {
    dir: PathBuf,
    data: PathBuf,
    hits: BTreeMap<String, u64>,
    records: Vec<serde_json::Value>,
    summary: Vec<String>,
    bytes: u64,
}

fn reference(base: &Path) -> Reference {
    let out = base.join("reference");
    let data = base.join("data");
    let log = base.join("faults.log");
    let o = run(
        &quickstart_args(&out, &data),
        &[("CLIPSTOCK_FAULT_LOG", log.display().to_string())],
    );
    assert!(o.status.success(), "the reference run: {}", describe(&o));
    let dir = out.join(RUN);
    let bytes = du(&dir);
    Reference {
        hits: hit_counts(&log),
        records: records(&dir),
        summary: summary(&dir),
        dir,
        data,
        bytes,
    }
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The finished run in `dir` is the reference's, file for file and record for record.
fn assert_same_as(reference: &Reference, dir: &Path, case: &str) {
    for f in SAME_BYTES {
        let a = std::fs::read(reference.dir.join(f)).expect("a reference file");
        let b = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{case}: {f}: {e}"));
        assert!(a == b, "{case}: {f} differs from the uninterrupted run's");
    }
    let got = records(dir);
    assert_eq!(
        got.len(),
        reference.records.len(),
        "{case}: metrics.jsonl has {} records, the uninterrupted run {}",
        got.len(),
        reference.records.len()
    );
    for (i, (a, b)) in reference.records.iter().zip(&got).enumerate() {
        assert_eq!(a, b, "{case}: metrics.jsonl record {i} differs");
    }
    assert_eq!(
        summary(dir),
        reference.summary,
        "{case}: summary.csv differs"
    );
    let left = temporaries(dir);
    assert!(left.is_empty(), "{case}: temporary files left: {left:?}");
}

/// The `(point, occurrence)` cases of this run: the first write, then every point with one
/// occurrence drawn from `seed`, plus a second one for points reached more than 8 times
/// (writes, steps, batches).
fn cases(hits: &BTreeMap<String, u64>, seed: u64) -> Vec<(String, u64)> {
    let mut rng = clipstock_tensors::SplitMix64(seed);
    // Always: the run's first write (its config.toml), before and after the data is synced —
    // a start killed there once left a folder no new start would replace.
    let mut cases: Vec<(String, u64)> =
        vec![("atomic.write".into(), 1), ("atomic.synced".into(), 1)];
    for (point, &count) in hits {
        let draws = if count > 8 { 2 } else { 1 };
        for _ in 0..draws {
            let n = 1 + rng.next_u64() % count;
            if !cases.contains(&(point.clone(), n)) {
                cases.push((point.clone(), n));
            }
        }
    }
    cases
}

#[cfg(unix)]
fn killed_by_sigkill(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

#[test]
fn sigkill_at_every_crash_point_then_resume_ends_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = reference(tmp.path());
    let points: Vec<&str> = reference.hits.keys().map(String::as_str).collect();
    // The suite is only as good as its points: each kind of moment must be reachable.
    for needed in [
        "train.backward",
        "eval.batch",
        "merge.computed",
        "metrics.appended",
        "atomic.write",
        "atomic.synced",
        "atomic.renamed",
        "checkpoint.written",
        "checkpoint.renamed",
        "checkpoint.committed",
    ] {
        assert!(
            points.contains(&needed),
            "crash point {needed} never reached: {points:?}"
        );
    }
    let seed = suite_seed();
    let cases = cases(&reference.hits, seed);
    eprintln!(
        "fault suite: seed {seed} (CLIPSTOCK_FAULT_SEED={seed} reproduces it), {} cases over {} points",
        cases.len(),
        points.len()
    );
    for (i, (point, n)) in cases.iter().enumerate() {
        let case = format!("seed {seed}, case {i}: SIGKILL at {point}:{n}");
        let out = tmp.path().join(format!("case{i}"));
        let args = quickstart_args(&out, &reference.data);
        let dir = out.join(RUN);
        let killed = run(&args, &[("CLIPSTOCK_FAULT_AT", format!("{point}:{n}"))]);
        assert!(killed_by_sigkill(&killed), "{case}: {}", describe(&killed));
        // The first case is killed a second time, during its resume, at a point of its own.
        if i == 0 {
            let (p2, n2) = &cases[cases.len() / 2];
            let again = finish(&args, &dir, &[("CLIPSTOCK_FAULT_AT", format!("{p2}:{n2}"))]);
            assert!(
                killed_by_sigkill(&again) || again.status.success(),
                "{case}, then {p2}:{n2} during the resume: {}",
                describe(&again)
            );
        }
        let done = finish(&args, &dir, &[]);
        assert!(done.status.success(), "{case}, resume: {}", describe(&done));
        assert_same_as(&reference, &dir, &case);
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A tmpfs mounted for the test and unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None where mounting is not allowed (not root, no CAP_SYS_ADMIN, not Linux).
    fn mount(at: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, bytes: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot resize the tmpfs at {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_clearly_and_the_run_resumes_once_there_is_room() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = reference(tmp.path());
    let seed = suite_seed();
    let mut rng = clipstock_tensors::SplitMix64(seed ^ 0xD15C);
    // Room for 20–95% of the finished run directory: over the commits the disk fills up in
    // every phase, from the first checkpoint to the final exports.
    let percent = 20 + rng.next_u64() % 76;
    let room = (reference.bytes * percent / 100).max(64 << 10);
    let out = tmp.path().join("full");
    let Some(disk) = Tmpfs::mount(&out, room) else {
        eprintln!(
            "skipped: cannot mount a tmpfs at {} (needs root or CAP_SYS_ADMIN); CI runs this \
             as root",
            out.display()
        );
        return;
    };
    let case = format!("seed {seed}: a disk with room for {percent}% of the run ({room} bytes)");
    let args = quickstart_args(&out, &reference.data);
    let dir = out.join(RUN);
    let full = run(&args, &[]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{case}: {}", describe(&full));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{case}: one error line expected: {stderr}");
    assert!(
        errors[0].contains("No space left on device") && !errors[0].contains("Io("),
        "{case}: the error must say the disk is full, once and readably: {}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    let left = temporaries(&out);
    assert!(left.is_empty(), "{case}: a failed write left {left:?}");
    disk.resize(reference.bytes * 3);
    let done = finish(&args, &dir, &[]);
    assert!(done.status.success(), "{case}, resume: {}", describe(&done));
    assert_same_as(&reference, &dir, &case);
}

#[test]
fn closed_output_streams_do_not_stop_a_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = reference(tmp.path());
    let out = tmp.path().join("closed");
    let args = quickstart_args(&out, &reference.data);
    // Both streams are pipes whose reading end is gone, as with `… 2>&1 | head -0`.
    let mut child = command(&args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "a closed stdout/stderr: {status}");
    let dir = out.join(RUN);
    assert_same_as(&reference, &dir, "closed stdout and stderr");
    let log = std::fs::read_to_string(dir.join("train.log")).expect("train.log");
    assert!(
        log.contains("merge"),
        "train.log must still get everything: {log}"
    );
}
