//! The run directory's lock: `flock` on `<run>/.lock`, which holds the owner's PID. The kernel
//! releases it when the process dies, however it dies, so a held lock always means a live
//! process and a directory nobody holds is safe to judge (resume, or replace an abandoned
//! start).
//!
//! The lock file lives inside the run directory (not beside it) so that a run directory stays
//! one self-contained folder that can be moved. A start therefore creates the directory first,
//! then locks, then looks at what is inside; replacing an abandoned start empties the
//! directory but keeps `.lock`, since deleting a locked file would let a third process lock a
//! fresh inode under the same name while we still write there.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Result, TrainError, io};

/// The lock file's name inside the run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held lock; clones share it, and it is released when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RunLock {
    _file: Arc<File>,
}

impl RunLock {
    /// Takes the lock of the existing directory `dir`, or fails with [`TrainError::RunLocked`]
    /// naming the holder.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        // A few rounds: a holder that empties and removes its directory between our open and
        // our lock leaves us holding an inode that is no longer `.lock`.
        for _ in 0..10 {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io("open the lock file", &path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(locked(dir, read_pid(&mut file)));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io("lock", &path)(e));
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            let pid = std::process::id().to_string();
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()))
                .map_err(io("write", &path))?;
            return Ok(RunLock {
                _file: Arc::new(file),
            });
        }
        Err(locked(dir, None))
    }

    /// The PID holding `dir`'s lock, if anyone does (creates nothing).
    pub fn holder(dir: &Path) -> Option<Option<u32>> {
        let mut file = File::options().read(true).open(dir.join(LOCK_FILE)).ok()?;
        match file.try_lock_shared() {
            Err(std::fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            _ => None,
        }
    }
}

fn locked(dir: &Path, pid: Option<u32>) -> TrainError {
    TrainError::RunLocked {
        path: dir.to_path_buf(),
        pid,
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_a_drop_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = RunLock::acquire(dir.path()).expect("lock");
        let clone = first.clone();
        let err = RunLock::acquire(dir.path()).expect_err("held");
        let pid = std::process::id();
        assert!(
            matches!(err, TrainError::RunLocked { pid: Some(p), .. } if p == pid),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("PID {pid}")), "{err}");
        assert_eq!(RunLock::holder(dir.path()), Some(Some(pid)));
        drop(first);
        assert!(
            RunLock::acquire(dir.path()).is_err(),
            "a clone still holds it"
        );
        drop(clone);
        assert_eq!(RunLock::holder(dir.path()), None);
        RunLock::acquire(dir.path()).expect("free again");
    }
}
