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

/// The job's exit status, which must come within `limit`: `what` names the event it must
/// not hang after.
fn ended_within(
    job: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = job.try_wait().expect("wait") {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "the job did not end within {limit:?} of {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mpirun -np NP` of `args` (whose run directory is `dir`), SIGKILLed in one of its
/// processes after step 8: the job must end, non-zero, within 60 s (mpirun's own
/// abort-on-failure, not a hang); then the `--resume` with the same `-np` must end bitwise
/// where `reference` ended.
fn killed_then_resumed(np: usize, args: &[String], dir: &Path, reference: &Path, case: &str) {
    let mut job = mpirun(np, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    wait_for_step(&dir.join("metrics.jsonl"), 8, &mut job);
    let ranks = String::from_utf8(
        Command::new("pgrep")
            .args(["-P", &job.id().to_string()])
            .output()
            .expect("pgrep")
            .stdout,
    )
    .expect("pids");
    let victim = ranks.lines().nth(1).expect("a rank process");
    let killed = Command::new("kill")
        .args(["-9", victim])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = ended_within(&mut job, Duration::from_secs(60), "a rank's death");
    assert!(!status.success(), "a job with a dead rank must fail");
    let mut resume = args.to_vec();
    resume.push("--resume".into());
    let o = output(mpirun(np, &resume));
    assert!(o.status.success(), "resume: {}", describe(&o));
    assert_same_run(reference, dir, case);
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
    killed_then_resumed(
        2,
        &small_quickstart(tmp.path(), "killed", &extra),
        &tmp.path().join("killed"),
        &single,
        "killed, then resumed with mpirun -np 2",
    );

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
        "the stop's checkpoint: {latest}\n{}",
        describe(&o)
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

/// `‖a − b‖ / ‖b − w0‖` over every tensor: how far a run lands from another relative to how
/// far training moved it. A tensor that `b` left at w0 to the bit (one the loss does not
/// use, e.g. `logit_scale`) must be w0 in `a` too.
fn relative_gap(a: &Path, b: &Path, w0: &Path) -> f64 {
    use clipstock_tensors::StateDict;
    let read = |p: &Path| StateDict::read_safetensors(p).unwrap_or_else(|e| panic!("{e}"));
    let (a, b, w0) = (read(a), read(b), read(w0));
    let (mut gap, mut moved) = (0.0f64, 0.0f64);
    for (name, tb) in b.iter() {
        let ta = a.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let t0 = w0.get(name).unwrap_or_else(|| panic!("{name} not in w0"));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if bits(&tb.data) == bits(&t0.data) {
            assert_eq!(
                bits(&ta.data),
                bits(&t0.data),
                "{name}: untrained in one process"
            );
        }
        for ((&x, &y), &z) in ta.data.iter().zip(&tb.data).zip(&t0.data) {
            gap += (f64::from(x) - f64::from(y)).powi(2);
            moved += (f64::from(y) - f64::from(z)).powi(2);
        }
    }
    (gap / moved).sqrt()
}

/// `run` against the one-process `single` within rounding: the step losses and gradient
/// norms within 1e-4 relative, the exports within 2e-3 of how far training moved them.
fn assert_close_to(single: &Path, run: &Path, case: &str) {
    let (a, b) = (records(run), records(single));
    assert_eq!(a.len(), b.len(), "{case}: record counts");
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(&b).filter(|(x, _)| x["kind"] == "step") {
        for key in ["loss", "grad_norm"] {
            let (xs, ys) = (x[key].as_array().expect(key), y[key].as_array().expect(key));
            for (vx, vy) in xs.iter().zip(ys) {
                let (vx, vy) = (vx.as_f64().expect(key), vy.as_f64().expect(key));
                worst = worst.max((vx - vy).abs() / vy.abs());
            }
        }
    }
    eprintln!("{case}: worst relative gap of a step's loss or gradient norm: {worst:.3e}");
    assert!(worst < 1e-4, "{case}: step losses and norms: {worst:.3e}");
    for f in ["run_1_final", "run_2_final", "merged_final"] {
        let file = format!("{f}.safetensors");
        let w0 = single.join("w0.safetensors");
        let gap = relative_gap(&run.join(&file), &single.join(&file), &w0);
        eprintln!("{case}: {f}: relative gap {gap:.3e}");
        assert!(
            gap < 1e-2,
            "{case}: {f}: {gap:.3e} from the one-process run"
        );
    }
}

/// Several processes per run (`run.ranks_per_seed = 2`): `-np 4` (a group of two per run)
/// and `-np 2` (one group training both runs) take the same steps, bit for bit; a killed
/// process stops the job and the resume ends bitwise there too; and the result is the
/// one-process training's within rounding.
#[test]
fn two_processes_per_run_share_its_batch() {
    assert!(
        have_mpirun(),
        "the mpi feature's tests need mpirun (openmpi-bin)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = ["optim.epochs=3"];
    let shared = ["optim.epochs=3", "run.ranks_per_seed=2"];
    assert_ok(&clipstock(&small_quickstart(tmp.path(), "single", &extra)));
    let single = tmp.path().join("single");

    let o = output(mpirun(4, &small_quickstart(tmp.path(), "k2_np4", &shared)));
    assert!(o.status.success(), "{}", describe(&o));
    let np4 = tmp.path().join("k2_np4");
    let o = output(mpirun(2, &small_quickstart(tmp.path(), "k2_np2", &shared)));
    assert!(o.status.success(), "{}", describe(&o));
    assert_same_run(
        &np4,
        &tmp.path().join("k2_np2"),
        "ranks_per_seed = 2, -np 2 vs -np 4",
    );

    // Against one process: the same images and the same maths, in shares of 8 instead of
    // batches of 16 and summed across processes, so only f32 rounding differs. The step
    // losses and gradient norms agree to about 1e-7 at the first step and stay within
    // ~1e-5 (measured: at most 6e-6 over the 18 steps). The weights drift further apart
    // than that (measured: 1.9e-4 of how far training moved them, and 2.2e-4 between
    // K = 2 and K = 4): AdamW divides each element's update by √v, so an element whose
    // gradient nearly cancels (small, with a large relative rounding error) still moves by
    // up to a full step, of either sign.
    assert_close_to(&single, &np4, "ranks_per_seed = 2");
    // Four processes for one run: the sum goes through a reduction and a broadcast instead
    // of MPI's all-reduce (see mpi_comm.rs), with the same tolerance.
    let o = output(mpirun(
        4,
        &small_quickstart(
            tmp.path(),
            "k4",
            &["optim.epochs=3", "run.ranks_per_seed=4"],
        ),
    ));
    assert!(o.status.success(), "{}", describe(&o));
    assert_close_to(&single, &tmp.path().join("k4"), "ranks_per_seed = 4");

    // SIGKILL one of the four mid-training, then resume with the same -np and K.
    killed_then_resumed(
        4,
        &small_quickstart(tmp.path(), "k2_killed", &shared),
        &tmp.path().join("k2_killed"),
        &np4,
        "ranks_per_seed = 2: killed, then resumed with -np 4",
    );
}

#[test]
fn a_share_of_runs_needs_its_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // One process cannot be a group of two.
    let o = clipstock(&small_quickstart(
        tmp.path(),
        "alone",
        &["run.ranks_per_seed=2"],
    ));
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("mpirun -np 4"), "{stderr}");
    // Three processes do not make groups of two.
    let o = output(mpirun(
        3,
        &small_quickstart(tmp.path(), "three", &["run.ranks_per_seed=2"]),
    ));
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("a multiple of 2"), "{}", describe(&o));
}

/// A process that fails on its own (here rank 1 reads a weights file that is not one, after
/// MPI has started) prints its error and ends the whole job: rank 0, waiting in a
/// collective for it, does not hang.
#[test]
fn a_process_that_fails_alone_ends_the_job() {
    assert!(
        have_mpirun(),
        "the mpi feature's tests need mpirun (openmpi-bin)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("broken.safetensors");
    std::fs::write(&bad, b"not a safetensors file").expect("write");
    let good = small_quickstart(tmp.path(), "one_fails", &[]);
    let mut broken = good.clone();
    broken.extend([
        "--set".to_string(),
        format!("model.weights={}", bad.display()),
    ]);
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "1"])
        .arg(env!("CARGO_BIN_EXE_clipstock"))
        .args(&good)
        .args([":", "-np", "1"])
        .arg(env!("CARGO_BIN_EXE_clipstock"))
        .args(&broken)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut job = c.spawn().expect("mpirun");
    let status = ended_within(&mut job, Duration::from_secs(120), "one process's error");
    let o = job.wait_with_output().expect("mpirun");
    assert!(!status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("rank 1: error") && stderr.contains("broken.safetensors"),
        "{stderr}"
    );
}
