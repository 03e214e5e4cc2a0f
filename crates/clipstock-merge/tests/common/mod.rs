//! Shared helpers of the integration tests: reading outputs with the `safetensors` crate (an
//! implementation independent of ours) and writing small input files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A float tensor read back by the `safetensors` crate, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Loads every tensor of a safetensors file with the `safetensors` crate.
pub fn load(path: &Path) -> BTreeMap<String, Loaded> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} does not load with safetensors: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => Vec::new(),
            };
            (
                name,
                Loaded {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub struct Raw {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32_raw(name: &str, shape: &[usize], data: &[f32]) -> Raw {
    Raw {
        name: name.to_string(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

pub fn bf16_raw(name: &str, shape: &[usize], data: &[f32]) -> Raw {
    Raw {
        name: name.to_string(),
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        bytes: data
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

pub fn i64_raw(name: &str, shape: &[usize], data: &[i64]) -> Raw {
    Raw {
        name: name.to_string(),
        dtype: Dtype::I64,
        shape: shape.to_vec(),
        bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Writes tensors with the `safetensors` crate.
pub fn write(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// What [`rewrite_f32`] does with one tensor.
pub enum Edit {
    /// Keep it, with whatever changes were made to shape and values (stored as f32).
    Keep,
    Drop,
    Replace(Raw),
}

/// Rewrites a fixture file through `edit`, which sees (name, shape, f32 values) per tensor.
pub fn rewrite_f32(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, &mut Vec<usize>, &mut Vec<f32>) -> Edit,
) {
    let mut out = Vec::new();
    for (name, mut t) in load(src) {
        match edit(&name, &mut t.shape, &mut t.data) {
            Edit::Keep => out.push(f32_raw(&name, &t.shape, &t.data)),
            Edit::Drop => {}
            Edit::Replace(raw) => out.push(raw),
        }
    }
    write(dst, &out);
}

/// Files in `dir`, sorted: to check that a failed merge left nothing behind.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// |a − b| ≤ rel·|b| + abs for every element; panics naming the worst element.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(*g), f64::from(*w));
        let err = (g - w).abs();
        let tol = rel * w.abs() + abs;
        if err > tol && worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    if let Some((i, err)) = worst {
        panic!(
            "{name}: element {i}: got {} want {} (|diff| {err:e})",
            got[i], want[i]
        );
    }
}
