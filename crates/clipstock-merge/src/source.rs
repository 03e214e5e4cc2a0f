//! Inputs of a merge: safetensors files (`clipstock-tensors`' [`SafetensorsFile`], memory-mapped
//! or read piecewise) and in-memory f32 tensors ([`MemorySource`]). The engine sees both through
//! `clipstock-tensors`' [`Source`] trait, one slice of one tensor at a time.

use std::ops::Range;

pub use clipstock_tensors::{Catalog, ReadMode, SafetensorsFile, Source, TensorInfo};

use crate::dtype::DType;
use crate::error::{MergeError, Result};
use clipstock_tensors::Result as TResult;

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
    catalog: Catalog,
    data: Vec<&'a [f32]>,
}

impl<'a> MemorySource<'a> {
    pub(crate) fn new(label: String, tensors: &[TensorRef<'a>]) -> Result<Self> {
        let mut infos = Vec::with_capacity(tensors.len());
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
            infos.push(TensorInfo {
                name: t.name.to_string(),
                dtype: DType::F32,
                shape: t.shape.to_vec(),
            });
        }
        let catalog =
            Catalog::new(label.clone(), infos).map_err(|tensor| MergeError::DuplicateTensor {
                tensor,
                file: label,
            })?;
        Ok(MemorySource {
            catalog,
            data: tensors.iter().map(|t| t.data).collect(),
        })
    }
}

impl Source for MemorySource<'_> {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn bytes<'b>(&'b self, i: usize, at: Range<usize>, _: &'b mut Vec<u8>) -> TResult<&'b [u8]> {
        // Native-endian bytes, only used to compare inputs; the engine never writes raw bytes
        // of an in-memory input (the in-memory sink takes f32 values).
        let bytes: &[u8] = bytemuck::cast_slice(self.data[i]);
        Ok(&bytes[at])
    }

    fn f32s<'b>(&'b self, i: usize, at: Range<usize>, _: &'b mut Vec<f32>) -> TResult<&'b [f32]> {
        Ok(&self.data[i][at])
    }
}
