//! Named crash points for the fault-injection suite (`crates/clipstock-cli/tests/faults.rs`).
//!
//! Every place where a crash could leave a run directory in a state of its own (between a
//! temporary file's fsync and its rename, between a checkpoint folder's rename and
//! `latest.json`, between a backward pass and the optimizer step, …) calls [`point`] with a
//! stable name. Two environment variables drive it:
//!
//! - `CLIPSTOCK_FAULT_LOG=FILE` appends the name of every point reached to `FILE`, one per
//!   line: the suite learns from an uninterrupted run which points exist and how often each is
//!   reached;
//! - `CLIPSTOCK_FAULT_AT=NAME:N` sends SIGKILL to the process itself the `N`-th time (1-based)
//!   point `NAME` is reached, so a crash lands on an exact instruction boundary, reproducibly,
//!   instead of wherever a polling test's `kill` happens to arrive.
//!
//! Compiled into every build on purpose: a cargo feature would give `cargo test` a different
//! binary from `cargo build`, and every alternation between the two would rebuild the
//! workspace. With neither variable set, a point costs one initialised `OnceLock` read.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// The variable naming the point (and occurrence) to crash at.
pub const FAULT_AT: &str = "CLIPSTOCK_FAULT_AT";
/// The variable naming the file that records every point reached.
pub const FAULT_LOG: &str = "CLIPSTOCK_FAULT_LOG";

struct Faults {
    at: Option<(String, u64)>,
    log: Option<Mutex<File>>,
    hits: Mutex<HashMap<&'static str, u64>>,
}

static FAULTS: OnceLock<Option<Faults>> = OnceLock::new();

fn from_env() -> Option<Faults> {
    let at = std::env::var(FAULT_AT).ok().and_then(|v| {
        let parsed = parse_at(&v);
        if parsed.is_none() {
            eprintln!("warning: ignoring {FAULT_AT}={v:?}: expected NAME:N with N ≥ 1");
        }
        parsed
    });
    let log = std::env::var_os(FAULT_LOG).and_then(|p| {
        match OpenOptions::new().create(true).append(true).open(&p) {
            Ok(f) => Some(Mutex::new(f)),
            Err(e) => {
                eprintln!("warning: ignoring {FAULT_LOG}: cannot open {p:?}: {e}");
                None
            }
        }
    });
    (at.is_some() || log.is_some()).then(|| Faults {
        at,
        log,
        hits: Mutex::new(HashMap::new()),
    })
}

fn parse_at(v: &str) -> Option<(String, u64)> {
    let (name, n) = v.rsplit_once(':')?;
    let n: u64 = n.trim().parse().ok()?;
    (n >= 1 && !name.is_empty()).then(|| (name.to_owned(), n))
}

/// A crash point (see the module docs); does nothing unless the suite's variables are set.
pub fn point(name: &'static str) {
    let Some(f) = FAULTS.get_or_init(from_env) else {
        return;
    };
    let count = match f.hits.lock() {
        Ok(mut hits) => {
            let c = hits.entry(name).or_insert(0);
            *c += 1;
            *c
        }
        Err(_) => return,
    };
    if let Some(log) = &f.log
        && let Ok(mut file) = log.lock()
    {
        // Written before a possible kill below, so the log names the point that was hit.
        let _ = writeln!(file, "{name}");
    }
    if let Some((at, n)) = &f.at
        && at == name
        && *n == count
    {
        kill_self();
    }
}

/// SIGKILL, as `kill -9` from outside would deliver it: no destructor, no buffered write and no
/// signal handler runs. `abort` (SIGABRT) is the fallback where `kill` cannot be started.
fn kill_self() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // The signal is asynchronous: wait for it rather than run on past the point.
    for _ in 0..500 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::parse_at;

    #[test]
    fn the_crash_point_is_a_name_and_a_positive_occurrence() {
        assert_eq!(
            parse_at("atomic.synced:3"),
            Some(("atomic.synced".into(), 3))
        );
        assert_eq!(parse_at("a:b:2"), Some(("a:b".into(), 2)));
        assert_eq!(parse_at("atomic.synced:0"), None);
        assert_eq!(parse_at("atomic.synced"), None);
        assert_eq!(parse_at(":1"), None);
        assert_eq!(parse_at("x:-1"), None);
    }
}
