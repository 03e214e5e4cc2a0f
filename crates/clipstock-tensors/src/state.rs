//! Host-side state dicts: named f32 tensors that remember the dtype they were stored in, read
//! from and written to safetensors files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::dtype::{DType, decode_into, encode_into};
use crate::error::{Result, TensorsError};
use crate::reader::{ReadMode, SafetensorsFile};
use crate::source::Source;
use crate::writer::{HeaderEntry, SafetensorsWriter};

/// One named tensor held on the host. `dtype` is the storage dtype (a float dtype; see
/// [`DType`]); the values are always f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, dtype: DType, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, dtype, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Little-endian bytes in `dtype` (a float dtype; others give zeros of the right length).
    pub fn to_bytes(&self, dtype: DType) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(dtype, &self.data, &mut out);
        out
    }

    /// Decodes little-endian `bytes` of float `dtype`.
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: Vec<usize>) -> HostTensor {
        let mut data = vec![0f32; bytes.len() / dtype.size()];
        decode_into(dtype, bytes, &mut data);
        HostTensor { shape, dtype, data }
    }
}

/// Where a state dict first holds a non-finite value (see [`StateDict::first_non_finite`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite<'a> {
    pub name: &'a str,
    pub index: usize,
    pub value: f32,
}

/// An ordered collection of named tensors. Order is the file's (or the model's) order, so that
/// exports list keys the way the source did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    order: Vec<String>,
    map: BTreeMap<String, HostTensor>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        let name = name.into();
        if self.map.insert(name.clone(), tensor).is_none() {
            self.order.push(name);
        }
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.map.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.map.get_mut(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        let t = self.map.remove(name)?;
        self.order.retain(|n| n != name);
        Some(t)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Names in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.order
            .iter()
            .filter_map(|n| self.map.get(n).map(|t| (n.as_str(), t)))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Renames every key with `f`; keys mapped to `None` are dropped.
    pub fn rename(self, mut f: impl FnMut(&str) -> Option<String>) -> StateDict {
        let mut out = StateDict::new();
        let StateDict { order, mut map } = self;
        for name in order {
            if let Some(t) = map.remove(&name)
                && let Some(new) = f(&name)
            {
                out.insert(new, t);
            }
        }
        out
    }

    /// The first tensor (in order) holding a NaN or an infinity, with the flat index and value
    /// of its first such element. One pass over the data, stopping at the first hit.
    pub fn first_non_finite(&self) -> Option<NonFinite<'_>> {
        self.iter().find_map(|(name, t)| {
            let index = t.data.iter().position(|x| !x.is_finite())?;
            Some(NonFinite {
                name,
                index,
                value: t.data[index],
            })
        })
    }

    /// A state dict of zeros with the given shapes (tests and shape-only checks).
    pub fn zeros_like_shapes(shapes: &[(String, Vec<usize>)]) -> StateDict {
        let mut out = StateDict::new();
        for (name, shape) in shapes {
            let n = shape.iter().product();
            out.insert(
                name.clone(),
                HostTensor::new(shape.clone(), DType::F32, vec![0.0; n]),
            );
        }
        out
    }

    /// Reads a safetensors file (memory-mapped when possible). Integer buffers (e.g. HF's
    /// `position_ids`) are not parameters and are left out; other non-float dtypes are errors
    /// naming the tensor.
    pub fn read_safetensors(path: &Path) -> Result<StateDict> {
        let file = SafetensorsFile::open(path, ReadMode::Auto)?;
        // The safetensors writer orders tensors by dtype, then name, so the file keeps no
        // meaningful order; use the natural one, as for pickles.
        let mut order: Vec<usize> = (0..file.tensors().len()).collect();
        order.sort_by_cached_key(|&i| natural_key(&file.tensors()[i].name));
        let mut out = StateDict::new();
        for idx in order {
            let info = &file.tensors()[idx];
            if matches!(info.dtype, DType::I64 | DType::I32) {
                continue;
            }
            if !info.dtype.is_float() {
                return Err(TensorsError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: info.name.clone(),
                    dtype: info.dtype,
                });
            }
            let data = file.read_f32_at(idx)?;
            out.insert(
                info.name.clone(),
                HostTensor::new(info.shape.clone(), info.dtype, data),
            );
        }
        Ok(out)
    }

    /// Writes safetensors atomically (see [`crate::AtomicFile`]), streaming one tensor at a
    /// time. `dtype` overrides every tensor's storage dtype; `None` keeps each tensor's own.
    ///
    /// Tensors are laid out as the `safetensors` crate's serializer lays them out (descending
    /// dtype, then name), so a state dict gives the same bytes as it always has.
    pub fn write_safetensors(
        &self,
        path: &Path,
        dtype: Option<DType>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let werr = |reason: String| TensorsError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(reason),
        };
        let mut tensors: Vec<(&str, &HostTensor, DType)> = Vec::with_capacity(self.len());
        for (name, t) in self.iter() {
            let d = dtype.unwrap_or(t.dtype);
            if !d.is_float() {
                return Err(werr(format!("tensor `{name}`: {d} is not a float dtype")));
            }
            let need: usize = t.shape.iter().product();
            if need != t.data.len() {
                return Err(werr(format!(
                    "tensor `{name}` holds {} values, its shape {:?} needs {need}",
                    t.data.len(),
                    t.shape
                )));
            }
            tensors.push((name, t, d));
        }
        tensors.sort_by(|a, b| {
            serializer_rank(a.2)
                .cmp(&serializer_rank(b.2))
                .then(a.0.cmp(b.0))
        });
        let entries: Vec<HeaderEntry<'_>> = tensors
            .iter()
            .map(|&(name, t, dtype)| HeaderEntry {
                name,
                dtype,
                shape: &t.shape,
            })
            .collect();
        let metadata: Option<BTreeMap<String, String>> = metadata.map(|m| m.into_iter().collect());
        let mut w = SafetensorsWriter::create(path, &entries, metadata.as_ref())?;
        for (i, (_, t, _)) in tensors.iter().enumerate() {
            w.begin(i)?;
            w.put_f32(&t.data)?;
        }
        w.finish()
    }
}

/// Position of a float dtype in the `safetensors` crate's serializer order (it sorts by
/// descending `Dtype`, whose floats rank F64 > F32 > BF16 > F16).
fn serializer_rank(d: DType) -> u8 {
    match d {
        DType::F64 => 0,
        DType::F32 => 1,
        DType::BF16 => 2,
        DType::F16 => 3,
        _ => 4,
    }
}

/// Whether `bytes` (a file's first 9 bytes suffice) start like safetensors: a u64 LE header
/// length, then a JSON object.
pub fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

/// Sort key that orders `blocks.10` after `blocks.9`.
pub fn natural_key(s: &str) -> Vec<(String, u64)> {
    s.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_string(), 0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_names_tensor_index_and_value() {
        let mut sd = sample();
        assert_eq!(sd.first_non_finite(), None);
        sd.insert(
            "c",
            HostTensor::new(vec![3], DType::F32, vec![0.0, 1.0, f32::NEG_INFINITY]),
        );
        sd.insert("d", HostTensor::new(vec![1], DType::F32, vec![f32::NAN]));
        let hit = sd.first_non_finite().expect("non-finite");
        assert_eq!(
            (hit.name, hit.index, hit.value),
            ("c", 2, f32::NEG_INFINITY)
        );
    }

    fn sample() -> StateDict {
        let mut sd = StateDict::new();
        sd.insert("b", HostTensor::new(vec![2], DType::F16, vec![1.5, -2.0]));
        sd.insert(
            "a",
            HostTensor::new(vec![1, 2], DType::BF16, vec![0.25, 3.0]),
        );
        sd.insert("s", HostTensor::new(vec![], DType::F32, vec![4.6052]));
        sd
    }

    #[test]
    fn safetensors_round_trip_keeps_order_dtype_and_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        let sd = sample();
        sd.write_safetensors(&p, None, None).expect("write");
        let back = StateDict::read_safetensors(&p).expect("read");
        assert_eq!(back.names().collect::<Vec<_>>(), ["a", "b", "s"]);
        for (name, t) in sd.iter() {
            assert_eq!(back.get(name), Some(t), "{name}");
        }
    }

    #[test]
    fn round_trip_in_each_float_dtype() {
        // Values exact in every dtype, so each round trip must give them back bit for bit.
        let values = vec![0.0, -1.5, 3.25, 0.125, -65504.0, 1.0e-3_f32];
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("x.safetensors");
            let mut sd = StateDict::new();
            sd.insert("w", HostTensor::new(vec![2, 3], DType::F32, values.clone()));
            sd.write_safetensors(&p, Some(dtype), None).expect("write");
            let back = StateDict::read_safetensors(&p).expect("read");
            let t = back.get("w").expect("w");
            assert_eq!((t.dtype, t.shape.as_slice()), (dtype, &[2usize, 3][..]));
            let mut want = Vec::new();
            encode_into(dtype, &values, &mut want);
            let mut want_values = vec![0f32; values.len()];
            decode_into(dtype, &want, &mut want_values);
            assert_eq!(t.data, want_values, "{dtype}");
            if dtype == DType::F32 || dtype == DType::F64 {
                assert_eq!(t.data, values, "{dtype}");
            }
        }
    }

    #[test]
    fn bytes_equal_the_reference_serializer() {
        let mut sd = sample();
        sd.insert(
            "blocks.10.w",
            HostTensor::new(vec![3], DType::F64, vec![1.0, 2.0, -0.5]),
        );
        sd.insert(
            "blocks.9.w",
            HostTensor::new(vec![1], DType::F32, vec![7.0]),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        for meta in [None, Some(HashMap::from([("format".into(), "pt".into())]))] {
            let p = dir.path().join("x.safetensors");
            sd.write_safetensors(&p, None, meta.clone()).expect("write");
            let buffers: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = sd
                .iter()
                .map(|(n, t)| {
                    let st = match t.dtype {
                        DType::F32 => safetensors::Dtype::F32,
                        DType::F16 => safetensors::Dtype::F16,
                        DType::BF16 => safetensors::Dtype::BF16,
                        _ => safetensors::Dtype::F64,
                    };
                    (n.to_string(), t.shape.clone(), st, t.to_bytes(t.dtype))
                })
                .collect();
            let views: Vec<_> = buffers
                .iter()
                .map(|(n, s, d, b)| {
                    let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
                    (n.clone(), v)
                })
                .collect();
            let want = safetensors::serialize(views, meta).expect("serialize");
            assert_eq!(std::fs::read(&p).expect("read"), want);
        }
    }

    #[test]
    fn truncated_safetensors_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        sample().write_safetensors(&p, None, None).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).expect("write");
        let err = StateDict::read_safetensors(&p)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }

    #[test]
    fn integer_buffers_are_skipped_other_dtypes_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ids.safetensors");
        let ids = [0i64, 1, 2];
        let ids_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = [1.0f32, 2.0];
        let w_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let entries = [
            HeaderEntry {
                name: "position_ids",
                dtype: DType::I64,
                shape: &[3],
            },
            HeaderEntry {
                name: "w",
                dtype: DType::F32,
                shape: &[2],
            },
        ];
        let mut wr = SafetensorsWriter::create(&p, &entries, None).expect("create");
        wr.begin(0).expect("begin");
        wr.put_raw(&ids_bytes).expect("put");
        wr.begin(1).expect("begin");
        wr.put_raw(&w_bytes).expect("put");
        wr.finish().expect("finish");
        let sd = StateDict::read_safetensors(&p).expect("read");
        assert_eq!(sd.names().collect::<Vec<_>>(), ["w"]);

        let q = dir.path().join("mask.safetensors");
        let entries = [HeaderEntry {
            name: "mask",
            dtype: DType::U8,
            shape: &[2],
        }];
        let mut wr = SafetensorsWriter::create(&q, &entries, None).expect("create");
        wr.begin(0).expect("begin");
        wr.put_raw(&[0, 1]).expect("put");
        wr.finish().expect("finish");
        let err = StateDict::read_safetensors(&q).expect_err("u8").to_string();
        assert!(err.contains("mask") && err.contains("U8"), "{err}");
    }

    #[test]
    fn non_float_output_dtype_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        let err = sample()
            .write_safetensors(&p, Some(DType::I64), None)
            .expect_err("i64")
            .to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("I64"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["x.10.w", "x.9.w", "x.1.w"];
        v.sort_by_key(|a| natural_key(a));
        assert_eq!(v, ["x.1.w", "x.9.w", "x.10.w"]);
    }
}
