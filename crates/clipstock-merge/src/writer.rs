//! Atomic, streaming safetensors output.
//!
//! The `safetensors` crate serialises from views that must all be in memory at once; here the
//! header is computed from shapes and dtypes alone, then each tensor is written as the engine
//! produces it. Everything goes to a temporary sibling that is fsynced and renamed over the
//! target, and removed on any error or early drop, so no partial output is ever left behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dtype::{DType, encode_into};
use crate::error::{MergeError, Result};

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`].
/// Dropping it uncommitted removes the temporary file.
pub(crate) struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub(crate) fn create(path: &Path) -> Result<AtomicFile> {
        let werr = |source| MergeError::Write {
            path: path.to_path_buf(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            werr(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output path has no file name",
            ))
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // pid + counter: two merges in one process (greedy soup candidates, WiSE-FT alphas) or
        // two processes never share a temporary file.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(werr)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            // Large writes bypass the buffer; it only coalesces the many small tensors.
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(bytes).map_err(|source| MergeError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes, fsyncs, renames into place and (on Unix) fsyncs the directory so the rename
    /// itself survives a crash.
    pub(crate) fn commit(mut self) -> Result<()> {
        let werr = |source| MergeError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(buf) = self.file.take() {
            let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
            file.sync_all().map_err(werr)?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(werr)?;
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Best effort: some file systems refuse to fsync a directory.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        // Renamed: nothing left for Drop to clean up.
        self.tmp = PathBuf::new();
        Ok(())
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

/// One output tensor's header entry.
pub(crate) struct OutEntry<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
}

/// Streams tensors into a safetensors file in the order their entries were declared.
pub(crate) struct SafetensorsWriter {
    file: AtomicFile,
    /// Byte length of each declared tensor, to check that the engine wrote exactly that.
    lens: Vec<usize>,
    dtypes: Vec<DType>,
    current: Option<usize>,
    written: usize,
    encode_buf: Vec<u8>,
}

impl SafetensorsWriter {
    pub(crate) fn create(
        path: &Path,
        entries: &[OutEntry<'_>],
        metadata: &BTreeMap<String, String>,
    ) -> Result<SafetensorsWriter> {
        let header = build_header(entries, metadata).map_err(|e| MergeError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let mut file = AtomicFile::create(path)?;
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        Ok(SafetensorsWriter {
            file,
            lens: entries
                .iter()
                .map(|e| e.shape.iter().product::<usize>() * e.dtype.size())
                .collect(),
            dtypes: entries.iter().map(|e| e.dtype).collect(),
            current: None,
            written: 0,
            encode_buf: Vec::new(),
        })
    }

    fn check_previous_complete(&self) -> Result<()> {
        if let Some(c) = self.current
            && self.written != self.lens[c]
        {
            return Err(MergeError::Write {
                path: self.file.path.clone(),
                source: std::io::Error::other(format!(
                    "internal error: tensor #{c} got {} bytes, its header entry says {}",
                    self.written, self.lens[c]
                )),
            });
        }
        Ok(())
    }

    /// Starts tensor `idx`; tensors must come in declaration order.
    pub(crate) fn begin(&mut self, idx: usize) -> Result<()> {
        self.check_previous_complete()?;
        let expected = self.current.map_or(0, |c| c + 1);
        if idx != expected {
            return Err(MergeError::Write {
                path: self.file.path.clone(),
                source: std::io::Error::other(format!(
                    "internal error: tensor #{idx} written where #{expected} was expected"
                )),
            });
        }
        self.current = Some(idx);
        self.written = 0;
        Ok(())
    }

    /// Appends values of the current tensor, encoded in its declared dtype.
    pub(crate) fn put_f32(&mut self, values: &[f32]) -> Result<()> {
        let Some(c) = self.current else {
            return Ok(());
        };
        let dtype = self.dtypes[c];
        if dtype == DType::F32 && cfg!(target_endian = "little") {
            // The in-memory layout already is the file's: no encoding copy.
            let bytes: &[u8] = bytemuck::cast_slice(values);
            self.written += bytes.len();
            return self.file.write_all(bytes);
        }
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        encode_into(dtype, values, &mut buf);
        self.written += buf.len();
        let r = self.file.write_all(&buf);
        self.encode_buf = buf;
        r
    }

    /// Appends raw bytes (already in the declared dtype) of the current tensor.
    pub(crate) fn put_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.written += bytes.len();
        self.file.write_all(bytes)
    }

    /// Checks every tensor was written, then commits the file.
    pub(crate) fn finish(self) -> Result<()> {
        self.check_previous_complete()?;
        let done = self.current.map_or(0, |c| c + 1);
        if done != self.lens.len() {
            return Err(MergeError::Write {
                path: self.file.path.clone(),
                source: std::io::Error::other(format!(
                    "internal error: {done} of {} tensors written",
                    self.lens.len()
                )),
            });
        }
        self.file.commit()
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes (as the reference writer does)
/// so that the data section starts aligned.
fn build_header(
    entries: &[OutEntry<'_>],
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, serde_json::Error> {
    // Built by hand rather than through a serde map so the keys keep the input order (serde_json
    // maps sort keys); names and values still go through serde_json for escaping.
    let mut h = String::from("{");
    if !metadata.is_empty() {
        h.push_str("\"__metadata__\":");
        h.push_str(&serde_json::to_string(metadata)?);
    }
    let mut offset = 0usize;
    for e in entries {
        if h.len() > 1 {
            h.push(',');
        }
        let len = e.shape.iter().product::<usize>() * e.dtype.size();
        h.push_str(&serde_json::to_string(e.name)?);
        h.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            e.dtype.safetensors_name(),
            serde_json::to_string(e.shape)?,
            offset,
            offset + len
        ));
        offset += len;
    }
    h.push('}');
    let mut bytes = h.into_bytes();
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn header_is_padded_and_ordered() {
        let entries = [
            OutEntry {
                name: "z",
                dtype: DType::F32,
                shape: &[2],
            },
            OutEntry {
                name: "a\"b",
                dtype: DType::F16,
                shape: &[],
            },
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let h = build_header(&entries, &meta).expect("header");
        assert_eq!(h.len() % 8, 0);
        let text = String::from_utf8(h).expect("utf8");
        let z = text.find("\"z\"").expect("z");
        let a = text.find("a\\\"b").expect("escaped name");
        assert!(z < a, "{text}");
        assert!(text.contains("\"data_offsets\":[8,10]"), "{text}");
    }
}
