//! What every CLI test binary needs: the repository root, running the built `clipstock` there,
//! and the two outcome checks (success, or exactly one clear `error:` line).

#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
