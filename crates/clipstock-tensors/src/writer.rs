//! Streaming safetensors output.
//!
//! The `safetensors` crate serialises from views that must all be in memory at once; here the
//! header is computed from shapes and dtypes alone, then each tensor is written as its producer
//! hands it over, through an [`AtomicFile`], so no partial output is ever left behind.

use std::collections::BTreeMap;
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::dtype::{DType, encode_into};
use crate::error::{Result, TensorsError};

/// One output tensor's header entry.
#[derive(Debug, Clone, Copy)]
pub struct HeaderEntry<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
}

/// Streams tensors into a safetensors file in the order their entries were declared.
#[derive(Debug)]
pub struct SafetensorsWriter {
    file: AtomicFile,
    /// Byte length of each declared tensor, to check that the producer wrote exactly that.
    lens: Vec<usize>,
    dtypes: Vec<DType>,
    current: Option<usize>,
    written: usize,
    encode_buf: Vec<u8>,
}

impl SafetensorsWriter {
    /// Writes the header of `entries` (and of `metadata`, as `__metadata__`, when given) to a
    /// temporary sibling of `path`.
    pub fn create(
        path: &Path,
        entries: &[HeaderEntry<'_>],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<SafetensorsWriter> {
        let header = build_header(entries, metadata).map_err(|e| TensorsError::Write {
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

    fn internal(&self, reason: String) -> TensorsError {
        TensorsError::Write {
            path: self.file.path().to_path_buf(),
            source: std::io::Error::other(format!("internal error: {reason}")),
        }
    }

    fn check_previous_complete(&self) -> Result<()> {
        if let Some(c) = self.current
            && self.written != self.lens[c]
        {
            return Err(self.internal(format!(
                "tensor #{c} got {} bytes, its header entry says {}",
                self.written, self.lens[c]
            )));
        }
        Ok(())
    }

    /// Starts tensor `idx`; tensors must come in declaration order.
    pub fn begin(&mut self, idx: usize) -> Result<()> {
        self.check_previous_complete()?;
        let expected = self.current.map_or(0, |c| c + 1);
        if idx != expected {
            return Err(self.internal(format!(
                "tensor #{idx} written where #{expected} was expected"
            )));
        }
        self.current = Some(idx);
        self.written = 0;
        Ok(())
    }

    /// Appends values of the current tensor, encoded in its declared dtype.
    pub fn put_f32(&mut self, values: &[f32]) -> Result<()> {
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
    pub fn put_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.written += bytes.len();
        self.file.write_all(bytes)
    }

    /// Checks every tensor was written, then commits the file.
    pub fn finish(self) -> Result<()> {
        self.check_previous_complete()?;
        let done = self.current.map_or(0, |c| c + 1);
        if done != self.lens.len() {
            return Err(self.internal(format!("{done} of {} tensors written", self.lens.len())));
        }
        self.file.commit()
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes (as the reference writer does)
/// so that the data section starts aligned.
fn build_header(
    entries: &[HeaderEntry<'_>],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::result::Result<Vec<u8>, serde_json::Error> {
    // Built by hand rather than through a serde map so the keys keep the declared order (serde_json
    // maps sort keys); names and values still go through serde_json for escaping. The layout
    // (`__metadata__` first, compact JSON, fields in this order) is the reference writer's, so
    // the same entries give the same bytes.
    let mut h = String::from("{");
    if let Some(m) = metadata {
        h.push_str("\"__metadata__\":");
        h.push_str(&serde_json::to_string(m)?);
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
    fn header_is_padded_and_ordered() {
        let entries = [
            HeaderEntry {
                name: "z",
                dtype: DType::F32,
                shape: &[2],
            },
            HeaderEntry {
                name: "a\"b",
                dtype: DType::F16,
                shape: &[],
            },
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let h = build_header(&entries, Some(&meta)).expect("header");
        assert_eq!(h.len() % 8, 0);
        let text = String::from_utf8(h).expect("utf8");
        let z = text.find("\"z\"").expect("z");
        let a = text.find("a\\\"b").expect("escaped name");
        assert!(z < a, "{text}");
        assert!(text.contains("\"data_offsets\":[8,10]"), "{text}");
    }

    #[test]
    fn wrong_byte_counts_and_missing_tensors_are_errors_and_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.safetensors");
        let entries = [
            HeaderEntry {
                name: "a",
                dtype: DType::F32,
                shape: &[2],
            },
            HeaderEntry {
                name: "b",
                dtype: DType::F32,
                shape: &[1],
            },
        ];
        let mut w = SafetensorsWriter::create(&p, &entries, None).expect("create");
        w.begin(0).expect("begin");
        w.put_f32(&[1.0]).expect("put");
        let err = w.begin(1).expect_err("short tensor").to_string();
        assert!(err.contains("tensor #0 got 4 bytes"), "{err}");
        drop(w);

        let mut w = SafetensorsWriter::create(&p, &entries, None).expect("create");
        w.begin(0).expect("begin");
        w.put_f32(&[1.0, 2.0]).expect("put");
        let err = w.finish().expect_err("one missing").to_string();
        assert!(err.contains("1 of 2 tensors written"), "{err}");
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
