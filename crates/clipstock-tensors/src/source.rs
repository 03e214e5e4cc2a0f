//! [`Source`]: what a reader of named tensors by slices needs from its input. The merge engine
//! walks multi-GB checkpoints through it one slice of one tensor at a time, which keeps its
//! working memory at a few MB; [`SafetensorsFile`](crate::SafetensorsFile) implements it, and
//! so can any in-memory store.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::Result;
use crate::reader::TensorInfo;

/// The tensors of a source (names, dtypes, shapes) in storage order, looked up by name, and the
/// label errors name the source by (a path, or e.g. `model 2`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    label: String,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl Catalog {
    /// Fails with the first name that stands twice in `tensors`.
    pub fn new(label: String, tensors: Vec<TensorInfo>) -> Result<Catalog, String> {
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(t.name.clone());
            }
        }
        Ok(Catalog {
            label,
            tensors,
            index,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Index of `name` into [`Catalog::tensors`].
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// A set of named tensors, readable by element or byte ranges. Ranges must lie inside the
/// tensor.
pub trait Source: Sync {
    fn catalog(&self) -> &Catalog;
    /// How errors name this input.
    fn label(&self) -> &str {
        self.catalog().label()
    }
    /// Tensors in storage order.
    fn tensors(&self) -> &[TensorInfo] {
        self.catalog().tensors()
    }
    /// Index into [`Source::tensors`].
    fn find(&self, name: &str) -> Option<usize> {
        self.catalog().find(name)
    }
    /// Bytes `at` of tensor `i`'s data, borrowed from the input or read into `tmp`.
    fn bytes<'a>(&'a self, i: usize, at: Range<usize>, tmp: &'a mut Vec<u8>) -> Result<&'a [u8]>;
    /// Bytes `at` of tensor `i` when they can be borrowed for as long as the source lives (a
    /// mapping), so that they can be queued for writing without a copy; `None` when they have
    /// to be read.
    fn mapped_bytes(&self, _i: usize, _at: Range<usize>) -> Option<&[u8]> {
        None
    }
    /// Elements `at` of float tensor `i` as f32: borrowed from the input when it already holds
    /// aligned little-endian f32, otherwise read or decoded into `tmp`.
    fn f32s<'a>(&'a self, i: usize, at: Range<usize>, tmp: &'a mut Vec<f32>) -> Result<&'a [f32]>;
    /// Copies elements `[start, start + out.len())` of float tensor `idx` into `out`.
    fn read_f32_into(&self, idx: usize, start: usize, out: &mut [f32]) -> Result<()> {
        let mut buf = Vec::new();
        let v = self.f32s(idx, start..start + out.len(), &mut buf)?;
        out.copy_from_slice(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn info(name: &str) -> TensorInfo {
        TensorInfo {
            name: name.to_owned(),
            dtype: DType::F32,
            shape: vec![2],
        }
    }

    #[test]
    fn a_catalog_finds_by_name_and_refuses_a_name_twice() {
        let c = Catalog::new("m".into(), vec![info("b"), info("a")]).expect("distinct");
        assert_eq!((c.label(), c.find("a"), c.find("z")), ("m", Some(1), None));
        assert_eq!(c.tensors()[0].name, "b");
        let dup = Catalog::new("m".into(), vec![info("a"), info("b"), info("a")]);
        assert_eq!(dup.err().as_deref(), Some("a"));
    }
}
