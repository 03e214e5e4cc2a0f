//! Temporaries left behind by killed processes. Every temporary this workspace writes carries
//! its writer's PID ([`AtomicFile`](crate::AtomicFile)'s `.NAME.tmp<PID>-<N>`, and scratch
//! folders named by [`scratch_prefix`]), so a later process can tell a dead writer's leftover
//! from a live writer's file in progress and remove only the former.

use std::path::{Path, PathBuf};

/// The prefix of a scratch folder in the system temporary directory (`clipstock-<PID>-…`).
pub fn scratch_prefix() -> String {
    format!("clipstock-{}-", std::process::id())
}

/// The writer's PID if `name` is one of our temporaries: `.NAME.tmp<PID>-<N>` or
/// `clipstock-<PID>-…`.
fn temporary_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("clipstock-") {
        let (pid, _) = rest.split_once('-')?;
        return pid.parse().ok();
    }
    if !name.starts_with('.') {
        return None;
    }
    let (_, tail) = name.rsplit_once(".tmp")?;
    let (pid, n) = tail.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` may still be writing. Our own PID counts as alive (a temporary of a
/// dead process that had our PID stays until a later process sweeps it: removing our own
/// could pull a file from under a writer of this process). Where liveness cannot be asked,
/// everyone is alive and nothing is removed.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporaries in `dir` (not below it) whose writer is no longer alive and
/// returns their paths. Best effort: an unreadable folder or a file that cannot be removed is
/// skipped, since a leftover must never fail the command that found it.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let p = e.path();
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        if gone.is_ok() {
            removed.push(p);
        }
    }
    removed.sort();
    removed
}

/// The one line a command prints about what [`remove_stale_temporaries`] removed, or `None`.
pub fn removed_line(removed: &[PathBuf]) -> Option<String> {
    if removed.is_empty() {
        return None;
    }
    let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    Some(format!(
        "removed {} stale temporary file{} of dead processes: {}",
        removed.len(),
        if removed.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID no process has: above the kernel's limit (4194304 at most).
    const DEAD: u32 = 4_194_999;

    #[test]
    fn names_are_recognised() {
        assert_eq!(temporary_pid(".latest.json.tmp123-0"), Some(123));
        assert_eq!(temporary_pid(".a.tmp.b.tmp77-12"), Some(77));
        assert_eq!(temporary_pid("clipstock-42-abc"), Some(42));
        assert_eq!(temporary_pid("latest.json"), None);
        assert_eq!(temporary_pid(".tmp-ckpt-3"), None);
        assert_eq!(temporary_pid(".x.tmp12-"), None);
        assert_eq!(temporary_pid("clipstock-x-1"), None);
    }

    #[test]
    fn only_dead_writers_temporaries_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let me = std::process::id();
        let dead_file = d.join(format!(".summary.csv.tmp{DEAD}-0"));
        let dead_dir = d.join(format!("clipstock-{DEAD}-xyz"));
        std::fs::write(&dead_file, b"x").expect("write");
        std::fs::create_dir(&dead_dir).expect("mkdir");
        std::fs::write(dead_dir.join("a"), b"x").expect("write");
        let keep = [
            format!(".summary.csv.tmp{me}-0"),
            ".summary.csv.tmp1-0".to_string(), // init is always alive
            "summary.csv".to_string(),
            ".tmp-ckpt-1".to_string(),
        ];
        for k in &keep {
            std::fs::write(d.join(k), b"x").expect("write");
        }
        let removed = remove_stale_temporaries(d);
        assert_eq!(removed, vec![dead_file.clone(), dead_dir.clone()]);
        assert!(!dead_file.exists() && !dead_dir.exists());
        for k in &keep {
            assert!(d.join(k).exists(), "{k} must stay");
        }
        let line = removed_line(&removed).expect("a line");
        assert!(line.starts_with("removed 2 stale temporary files of dead processes: "));
        assert_eq!(removed_line(&[]), None);
    }
}
