//! Atomic, streaming safetensors output: `clipstock-tensors`' writer and atomic file, with this
//! crate's error type, so that the engine and the report keep returning [`MergeError`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{MergeError, Result};

pub(crate) use clipstock_tensors::HeaderEntry as OutEntry;

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`].
/// Dropping it uncommitted removes the temporary file.
pub(crate) struct AtomicFile(clipstock_tensors::AtomicFile);

impl AtomicFile {
    pub(crate) fn create(path: &Path) -> Result<AtomicFile> {
        Ok(AtomicFile(clipstock_tensors::AtomicFile::create(path)?))
    }

    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.0.write_all(bytes)?)
    }

    pub(crate) fn commit(self) -> Result<()> {
        Ok(self.0.commit()?)
    }
}

/// Streams tensors into a safetensors file in the order their entries were declared.
pub(crate) struct SafetensorsWriter(clipstock_tensors::SafetensorsWriter);

impl SafetensorsWriter {
    /// An empty `metadata` writes no `__metadata__` entry.
    pub(crate) fn create(
        path: &Path,
        entries: &[OutEntry<'_>],
        metadata: &BTreeMap<String, String>,
    ) -> Result<SafetensorsWriter> {
        let metadata = (!metadata.is_empty()).then_some(metadata);
        clipstock_tensors::SafetensorsWriter::create(path, entries, metadata)
            .map(SafetensorsWriter)
            .map_err(MergeError::from)
    }

    /// Starts tensor `idx`; tensors must come in declaration order.
    pub(crate) fn begin(&mut self, idx: usize) -> Result<()> {
        Ok(self.0.begin(idx)?)
    }

    /// Appends values of the current tensor, encoded in its declared dtype.
    pub(crate) fn put_f32(&mut self, values: &[f32]) -> Result<()> {
        Ok(self.0.put_f32(values)?)
    }

    /// Appends raw bytes (already in the declared dtype) of the current tensor.
    pub(crate) fn put_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.0.put_raw(bytes)?)
    }

    /// Checks every tensor was written, then commits the file.
    pub(crate) fn finish(self) -> Result<()> {
        Ok(self.0.finish()?)
    }
}
