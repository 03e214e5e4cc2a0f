//! Inputs of a merge: safetensors files (memory-mapped, or read piecewise with positioned reads;
//! the file itself is `clipstock-tensors`' [`SafetensorsFile`]) and in-memory f32 tensors. The
//! engine sees both through the [`Source`] trait and only ever asks for a slice of one tensor at
//! a time, which is what keeps a merge of multi-GB checkpoints at a few MB of working memory.

use std::collections::HashMap;

pub use clipstock_tensors::{ReadMode, SafetensorsFile, TensorInfo};

use crate::dtype::DType;
use crate::error::{MergeError, Result};

/// What the merge engine needs from an input.
pub(crate) trait Source: Sync {
    /// How errors name this input (a path, or e.g. `model 2`).
    fn label(&self) -> &str;
    /// Tensors in storage order.
    fn tensors(&self) -> &[TensorInfo];
    /// Index into [`Source::tensors`].
    fn find(&self, name: &str) -> Option<usize>;
    /// Raw bytes `[byte_start, byte_start + len)` of tensor `idx`'s data, either borrowed from a
    /// mapping or read into `scratch`.
    fn bytes<'a>(
        &'a self,
        idx: usize,
        byte_start: usize,
        len: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]>;
    /// Bytes `[byte_start, byte_start + len)` of tensor `idx` when they can be borrowed for as
    /// long as the source lives (a mapping), so that they can be queued for writing without a
    /// copy; `None` when they have to be read.
    fn mapped_bytes(&self, _idx: usize, _byte_start: usize, _len: usize) -> Option<&[u8]> {
        None
    }
    /// Elements `[start, start + len)` of float tensor `idx` as f32: borrowed from the input
    /// when it already holds aligned little-endian f32 (a mapping, memory), otherwise read or
    /// decoded into `buf`.
    fn f32s<'a>(
        &'a self,
        idx: usize,
        start: usize,
        len: usize,
        buf: &'a mut Vec<f32>,
    ) -> Result<&'a [f32]>;
    /// Copies elements `[start, start + out.len())` of float tensor `idx` into `out`.
    fn read_f32(&self, idx: usize, start: usize, out: &mut [f32]) -> Result<()> {
        let mut buf = Vec::new();
        let v = self.f32s(idx, start, out.len(), &mut buf)?;
        out.copy_from_slice(v);
        Ok(())
    }
}

impl Source for SafetensorsFile {
    fn label(&self) -> &str {
        SafetensorsFile::label(self)
    }

    fn tensors(&self) -> &[TensorInfo] {
        SafetensorsFile::tensors(self)
    }

    fn find(&self, name: &str) -> Option<usize> {
        SafetensorsFile::find(self, name)
    }

    fn bytes<'a>(
        &'a self,
        idx: usize,
        byte_start: usize,
        len: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        Ok(SafetensorsFile::bytes(self, idx, byte_start, len, scratch)?)
    }

    fn mapped_bytes(&self, idx: usize, byte_start: usize, len: usize) -> Option<&[u8]> {
        SafetensorsFile::mapped_bytes(self, idx, byte_start, len)
    }

    fn f32s<'a>(
        &'a self,
        idx: usize,
        start: usize,
        len: usize,
        buf: &'a mut Vec<f32>,
    ) -> Result<&'a [f32]> {
        Ok(SafetensorsFile::f32s(self, idx, start, len, buf)?)
    }
}

/// A borrowed named f32 tensor, e.g. a parameter copied off a device.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// An owned named f32 tensor, as the in-memory merge returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Borrows as a [`TensorRef`].
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef {
            name: &self.name,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// In-memory input: a list of f32 tensors under a label.
pub(crate) struct MemorySource<'a> {
    label: String,
    data: Vec<&'a [f32]>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl<'a> MemorySource<'a> {
    pub(crate) fn new(label: String, tensors: &[TensorRef<'a>]) -> Result<Self> {
        let mut infos = Vec::with_capacity(tensors.len());
        let mut data = Vec::with_capacity(tensors.len());
        let mut index = HashMap::with_capacity(tensors.len());
        for t in tensors {
            let expected: usize = t.shape.iter().product();
            if expected != t.data.len() {
                return Err(MergeError::LengthMismatch {
                    tensor: t.name.to_string(),
                    file: label.clone(),
                    shape: t.shape.into(),
                    expected,
                    got: t.data.len(),
                });
            }
            if index.insert(t.name.to_string(), infos.len()).is_some() {
                return Err(MergeError::DuplicateTensor {
                    tensor: t.name.to_string(),
                    file: label.clone(),
                });
            }
            infos.push(TensorInfo {
                name: t.name.to_string(),
                dtype: DType::F32,
                shape: t.shape.to_vec(),
            });
            data.push(t.data);
        }
        Ok(MemorySource {
            label,
            data,
            tensors: infos,
            index,
        })
    }
}

impl Source for MemorySource<'_> {
    fn label(&self) -> &str {
        &self.label
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn bytes<'b>(
        &'b self,
        idx: usize,
        byte_start: usize,
        len: usize,
        _scratch: &'b mut Vec<u8>,
    ) -> Result<&'b [u8]> {
        // Native-endian bytes, only used to compare inputs; the engine never writes raw bytes
        // of an in-memory input (the in-memory sink takes f32 values).
        let bytes: &[u8] = bytemuck::cast_slice(self.data[idx]);
        Ok(&bytes[byte_start..byte_start + len])
    }

    fn f32s<'b>(
        &'b self,
        idx: usize,
        start: usize,
        len: usize,
        _buf: &'b mut Vec<f32>,
    ) -> Result<&'b [f32]> {
        Ok(&self.data[idx][start..start + len])
    }
}
