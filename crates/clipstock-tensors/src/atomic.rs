//! The one way a file is replaced: write a temporary sibling, fsync it, rename it over the
//! destination, fsync the directory. A reader (or a crash) sees the old file or the complete
//! new one, never a truncated mix; an error or an early drop removes the temporary file and
//! leaves the destination untouched.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, TensorsError};

/// Bounds the search for a free temporary name; only stale temporaries of crashed processes
/// that had our PID (common in containers, where PIDs restart at 1) occupy names.
const MAX_NAME_TRIES: u32 = 1000;

/// PID + this counter: two writers in one process (greedy soup candidates, WiSE-FT alphas,
/// threads) or in two processes never share a temporary file, and `create_new` never writes
/// into someone else's.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written under a temporary name `.NAME.tmp<PID>-<N>` next to its destination and
/// renamed into place by [`AtomicFile::commit`]. Dropping it uncommitted removes the temporary
/// file.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file for `path`, with a 1 MiB write buffer: large writes bypass
    /// it, it only coalesces many small ones (a streamed checkpoint's small tensors).
    pub fn create(path: &Path) -> Result<AtomicFile> {
        AtomicFile::with_capacity(path, 1 << 20)
    }

    fn with_capacity(path: &Path, capacity: usize) -> Result<AtomicFile> {
        let werr = |source| TensorsError::Write {
            path: path.to_path_buf(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            werr(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output path has no file name",
            ))
        })?;
        let dir = parent_dir(path);
        let mut tries = 0;
        let (tmp, file) = loop {
            let tmp = dir.join(format!(
                ".{}.tmp{}-{}",
                name.to_string_lossy(),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match File::options().write(true).create_new(true).open(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    tries += 1;
                    if tries >= MAX_NAME_TRIES {
                        return Err(werr(e));
                    }
                }
                Err(e) => return Err(werr(e)),
            }
        };
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(capacity, file)),
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` to the temporary file.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(bytes).map_err(|source| TensorsError::Write {
            path: self.path.clone(),
            source,
        })?;
        crate::fault::point("atomic.write");
        Ok(())
    }

    /// Flushes, fsyncs, renames into place and (on Unix) fsyncs the directory so that the
    /// rename itself survives a crash. On error the temporary file is removed.
    pub fn commit(mut self) -> Result<()> {
        let werr = |source| TensorsError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(buf) = self.file.take() {
            let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
            file.sync_all().map_err(werr)?;
        }
        crate::fault::point("atomic.synced");
        std::fs::rename(&self.tmp, &self.path).map_err(werr)?;
        crate::fault::point("atomic.renamed");
        // Renamed: nothing left for Drop to clean up.
        self.tmp = PathBuf::new();
        #[cfg(unix)]
        {
            // Best effort: some file systems refuse to fsync a directory, and the file itself
            // is already complete under its final name.
            if let Ok(d) = File::open(parent_dir(&self.path)) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Gives up: removes the temporary file, the destination stays as it was.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // The bytes are already in one buffer: no write buffer to fill.
    let mut f = AtomicFile::with_capacity(path, 0)?;
    f.write_all(bytes)?;
    f.commit()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&p).expect("create");
            f.write_all(b"partial").expect("write");
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn dropped_or_aborted_file_leaves_the_destination_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.json");
        std::fs::write(&p, b"old").expect("write");
        {
            let mut f = AtomicFile::create(&p).expect("create");
            f.write_all(b"new but unfinished").expect("write");
        }
        let mut f = AtomicFile::create(&p).expect("create");
        f.write_all(b"new but abandoned").expect("write");
        f.abort();
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert_eq!(listing(dir.path()), ["out.json"]);
    }

    #[test]
    fn commit_replaces_and_the_temporary_name_carries_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.json");
        std::fs::write(&p, b"old").expect("write");
        let mut f = AtomicFile::create(&p).expect("create");
        f.write_all(b"new").expect("write");
        let tmp = listing(dir.path())
            .into_iter()
            .find(|n| n != "out.json")
            .expect("a temporary sibling");
        assert!(
            tmp.starts_with(&format!(".out.json.tmp{}-", std::process::id())),
            "{tmp}"
        );
        f.commit().expect("commit");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        assert_eq!(listing(dir.path()), ["out.json"]);
    }

    #[test]
    fn write_atomic_writes_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(listing(dir.path()), ["a.txt"]);
    }

    #[test]
    fn failed_rename_removes_the_temporary_and_keeps_the_destination() {
        // A non-empty directory as the destination: the temporary file is written and
        // fsynced, then the rename fails.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("inside"), b"keep").expect("write");
        let err = write_atomic(&p, b"bytes").expect_err("must fail");
        assert!(
            matches!(&err, TensorsError::Write { path, .. } if path == &p),
            "{err}"
        );
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(listing(dir.path()), ["taken"]);
        assert_eq!(std::fs::read(p.join("inside")).expect("read"), b"keep");
    }

    #[test]
    fn missing_directory_is_a_write_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("no/such/dir/out.bin");
        let err = write_atomic(&p, b"x").expect_err("must fail").to_string();
        assert!(
            err.contains("cannot write") && err.contains("out.bin"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn stale_temporaries_of_a_reused_pid_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        // Occupy the next few names this process would pick.
        let next = COUNTER.load(Ordering::Relaxed);
        for n in next..next + 3 {
            std::fs::write(
                dir.path().join(format!(".f.tmp{}-{n}", std::process::id())),
                b"stale",
            )
            .expect("write");
        }
        write_atomic(&p, b"fresh").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"fresh");
    }
}
