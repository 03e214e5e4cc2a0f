//! Training over MPI processes on loopback (`--features mpi`, Open MPI's `mpirun`): one
//! process per run ends bitwise where the one-process run ends, a killed process stops the
//! job, Ctrl-C on mpirun stops it with a checkpoint, and a resume of either ends bitwise there
//! too.
//!
//! Run with `cargo test --release --workspace --features clipstock-cli/mpi --test mpi`; needs
//! `mpirun` (Debian: `openmpi-bin libopenmpi-dev`).

#![cfg(feature = "mpi")]

mod common;
use common::{assert_ok, clipstock, records, root, small_quickstart, wait_for_step};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun -np N clipstock ARGS`, from the repository root, allowed to run as root and to
/// start more processes than cores (CI and this machine have two).
fn mpirun(np: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_clipstock"))
    .args(args)
    .current_dir(root())
    .env("RUST_LOG", "warn");
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("mpirun (apt-get install openmpi-bin)")
}

fn describe(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SAME_BYTES: [&str; 6] = [
    "w0.safetensors",
    "run_1_final.safetensors",
    "run_2_final.safetensors",
    "merged_final.safetensors",
    "results.md",
    "merges/epoch_001.json",
];

fn assert_same_run(a: &Path, b: &Path, case: &str) {
    for f in SAME_BYTES {
        let x = std::fs::read(a.join(f)).unwrap_or_else(|e| panic!("{case}: {f}: {e}"));
        let y = std::fs::read(b.join(f)).unwrap_or_else(|e| panic!("{case}: {f}: {e}"));
        // results.md starts with the run's name, which differs.
        let body = |v: &[u8]| -> Vec<u8> {
            if f == "results.md" {
                v.splitn(2, |&c| c == b'\n')
                    .nth(1)
                    .unwrap_or_default()
                    .to_vec()
            } else {
                v.to_vec()
            }
        };
        assert!(
            body(&x) == body(&y),
            "{case}: {f} differs from the one-process run's"
        );
    }
    let (ra, rb) = (records(a), records(b));
    assert_eq!(ra.len(), rb.len(), "{case}: record counts");
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert_eq!(x, y, "{case}: metrics.jsonl record {i}");
    }
}

fn have_mpirun() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn one_process_per_run_is_bitwise_the_one_process_run_and_a_killed_process_stops_the_job() {
    assert!(
        have_mpirun(),
        "the mpi feature's tests need mpirun (openmpi-bin)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = ["optim.epochs=3"];
    assert_ok(&clipstock(&small_quickstart(tmp.path(), "single", &extra)));
    let single = tmp.path().join("single");

    let o = output(mpirun(2, &small_quickstart(tmp.path(), "mpi", &extra)));
    assert!(o.status.success(), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .matches("run directory:")
            .count()
            == 1,
        "only rank 0 reports: {}",
        describe(&o)
    );
    assert_same_run(&single, &tmp.path().join("mpi"), "mpirun -np 2");

    // SIGKILL one process mid-training: mpirun must end the job, non-zero, promptly.
    let args = small_quickstart(tmp.path(), "killed", &extra);
    let mut job = mpirun(2, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let dir = tmp.path().join("killed");
    wait_for_step(&dir.join("metrics.jsonl"), 8, &mut job);
    let ranks = String::from_utf8(
        Command::new("pgrep")
            .args(["-P", &job.id().to_string()])
            .output()
            .expect("pgrep")
            .stdout,
    )
    .expect("pids");
    let victim = ranks.lines().last().expect("a rank process");
    let killed = Command::new("kill")
        .args(["-9", victim])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job did not stop within 60 s of a rank's death"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a job with a dead rank must fail");

    let mut resume = args.clone();
    resume.push("--resume".into());
    let o = output(mpirun(2, &resume));
    assert!(o.status.success(), "resume: {}", describe(&o));
    assert_same_run(&single, &dir, "killed, then resumed with mpirun -np 2");

    // Ctrl-C on mpirun: it sends SIGTERM to every process, they agree on a stop at the next
    // step, save a checkpoint together and exit; the resume ends bitwise where it should. Ten
    // times the images, so the signal arrives well before the end.
    let long = ["optim.epochs=3", "data.train_limit=960"];
    assert_ok(&clipstock(&small_quickstart(
        tmp.path(),
        "single_long",
        &long,
    )));
    let single = tmp.path().join("single_long");
    let args = small_quickstart(tmp.path(), "interrupted", &long);
    let mut job = mpirun(2, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let dir = tmp.path().join("interrupted");
    wait_for_step(&dir.join("metrics.jsonl"), 8, &mut job);
    let sent = Command::new("kill")
        .args(["-INT", &job.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let o = job.wait_with_output().expect("mpirun ends");
    assert!(!o.status.success(), "a stopped job does not report success");
    let latest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoints/latest.json")).expect("latest.json"),
    )
    .expect("json");
    assert!(
        latest["global_step"].as_u64() >= Some(8) && latest["finished"] == false,
        "the stop's checkpoint: {latest}"
    );
    let mut resume = args.clone();
    resume.push("--resume".into());
    let o = output(mpirun(2, &resume));
    assert!(o.status.success(), "resume: {}", describe(&o));
    assert_same_run(&single, &dir, "Ctrl-C on mpirun, then resumed");
}

#[test]
fn more_processes_than_runs_are_refused() {
    assert!(
        have_mpirun(),
        "the mpi feature's tests need mpirun (openmpi-bin)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = output(mpirun(3, &small_quickstart(tmp.path(), "three", &[])));
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("3 processes for 2 runs"),
        "{}",
        describe(&o)
    );
}
