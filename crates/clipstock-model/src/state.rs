//! Host-side state dicts: named f32 tensors that remember the dtype they were stored in, read
//! from safetensors or PyTorch pickles and written back to safetensors atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{ModelError, Result};

/// Storage dtype of a tensor on disk. Values are always held as f32 in memory; f16 and bf16
/// round-trip exactly through f32, so exporting in the source dtype is lossless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    F64,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::Bf16),
            "f64" | "float64" => Some(DType::F64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::F64 => 8,
        }
    }

    fn st(self) -> StDtype {
        match self {
            DType::F32 => StDtype::F32,
            DType::F16 => StDtype::F16,
            DType::Bf16 => StDtype::BF16,
            DType::F64 => StDtype::F64,
        }
    }
}

/// One named tensor held on the host.
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

    /// Little-endian bytes in `dtype`.
    pub fn to_bytes(&self, dtype: DType) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * dtype.size());
        match dtype {
            DType::F32 => self
                .data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::F16 => self
                .data
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            DType::Bf16 => self
                .data
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            DType::F64 => self
                .data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        }
        out
    }

    fn from_le_bytes(bytes: &[u8], dtype: DType, shape: Vec<usize>) -> HostTensor {
        let data: Vec<f32> = match dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
        };
        HostTensor { shape, dtype, data }
    }
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

    /// Reads a checkpoint, detecting the container from its first bytes.
    pub fn read(path: &Path) -> Result<StateDict> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match detect_format(&bytes) {
            Format::Safetensors => Self::from_safetensors_bytes(&bytes, path),
            Format::Zip => {
                if is_torchscript(&bytes) {
                    return Err(ModelError::TorchScript {
                        path: path.to_path_buf(),
                    });
                }
                drop(bytes);
                Self::read_pytorch(path)
            }
            Format::LegacyPickle => {
                drop(bytes);
                Self::read_pytorch(path)
            }
            Format::Unknown => Err(ModelError::UnknownFormat {
                path: path.to_path_buf(),
                magic: bytes
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
        }
    }

    pub fn from_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // The safetensors writer reorders tensors (by dtype, then name), so the file keeps no
        // meaningful order; use the natural one, as for pickles.
        let mut entries: Vec<_> = st.tensors();
        entries.sort_by_key(|a| natural_key(&a.0));
        let mut out = StateDict::new();
        for (name, view) in entries {
            let dtype = match view.dtype() {
                StDtype::F32 => DType::F32,
                StDtype::F16 => DType::F16,
                StDtype::BF16 => DType::Bf16,
                StDtype::F64 => DType::F64,
                other => {
                    // Integer buffers (e.g. HF `position_ids`) are not parameters; keep them out
                    // of the float state but remember they existed so naming can explain them.
                    if matches!(other, StDtype::I64 | StDtype::I32) {
                        continue;
                    }
                    return Err(ModelError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let t = HostTensor::from_le_bytes(view.data(), dtype, view.shape().to_vec());
            out.insert(name, t);
        }
        Ok(out)
    }

    fn read_pytorch(path: &Path) -> Result<StateDict> {
        use pytorch_reader::{DType as PtDtype, PytorchReader};
        let err = |reason: String| ModelError::Pytorch {
            path: path.to_path_buf(),
            reason,
        };
        let reader = PytorchReader::new(path).map_err(|e| err(e.to_string()))?;
        let tensors = reader.into_tensors();
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        // Pickled dicts come back as a hash map; sort for a stable, human-friendly order.
        names.sort_by_key(|a| natural_key(a));
        let mut out = StateDict::new();
        for name in names {
            let Some(t) = tensors.get(&name) else {
                continue;
            };
            let dtype = match t.dtype() {
                PtDtype::F32 => DType::F32,
                PtDtype::F16 => DType::F16,
                PtDtype::BF16 => DType::Bf16,
                PtDtype::F64 => DType::F64,
                PtDtype::I64 | PtDtype::I32 => continue,
                other => {
                    return Err(ModelError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let bytes = t.read().map_err(|e| err(format!("tensor `{name}`: {e}")))?;
            let shape = t.shape().to_vec();
            let expected = shape.iter().product::<usize>() * dtype.size();
            if bytes.len() != expected {
                return Err(err(format!(
                    "tensor `{name}` holds {} bytes, its shape {shape:?} needs {expected}",
                    bytes.len()
                )));
            }
            out.insert(name, HostTensor::from_le_bytes(&bytes, dtype, shape));
        }
        Ok(out)
    }

    /// Writes safetensors atomically: a temporary file in the same folder, fsynced, then renamed,
    /// so an interrupted write never leaves a truncated file under the final name.
    /// `dtype` overrides every tensor's storage dtype; `None` keeps each tensor's own.
    /// `shapes` overrides the written shape of some tensors (e.g. 0-dim `logit_scale`).
    pub fn write_safetensors(
        &self,
        path: &Path,
        dtype: Option<DType>,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<()> {
        let werr = |reason: String| ModelError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let buffers: Vec<(String, Vec<usize>, DType, Vec<u8>)> = self
            .iter()
            .map(|(n, t)| {
                let d = dtype.unwrap_or(t.dtype);
                (n.to_string(), t.shape.clone(), d, t.to_bytes(d))
            })
            .collect();
        let views = buffers
            .iter()
            .map(|(n, s, d, b)| {
                safetensors::tensor::TensorView::new(d.st(), s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| werr(format!("tensor `{n}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, metadata).map_err(|e| werr(e.to_string()))?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let werr = |reason: String| ModelError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| werr("not a file path".into()))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e.to_string()));
    }
    Ok(())
}

enum Format {
    Safetensors,
    Zip,
    LegacyPickle,
    Unknown,
}

/// Whether `bytes` (a file's first 9 bytes suffice) start like safetensors: a u64 LE header
/// length, then a JSON object.
pub fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

fn detect_format(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"PK\x03\x04") {
        return Format::Zip;
    }
    // Checked before the pickle test: the header length's low byte can be 0x80 too.
    if looks_like_safetensors(bytes) {
        return Format::Safetensors;
    }
    // Legacy torch.save: a pickle (PROTO opcode 0x80, protocol 2..5).
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Format::LegacyPickle;
    }
    Format::Unknown
}

/// TorchScript archives hold `constants.pkl` and `code/` next to `data.pkl`; plain
/// `torch.save` zips never do. The zip's central directory sits at the end of the file.
fn is_torchscript(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1 << 20)..];
    let needle = b"constants.pkl";
    tail.windows(needle.len()).any(|w| w == needle)
}

/// Sort key that orders `blocks.10` after `blocks.9`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
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

    fn sample() -> StateDict {
        let mut sd = StateDict::new();
        sd.insert("b", HostTensor::new(vec![2], DType::F16, vec![1.5, -2.0]));
        sd.insert(
            "a",
            HostTensor::new(vec![1, 2], DType::Bf16, vec![0.25, 3.0]),
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
        let back = StateDict::read(&p).expect("read");
        assert_eq!(back.names().collect::<Vec<_>>(), ["a", "b", "s"]);
        for (name, t) in sd.iter() {
            assert_eq!(back.get(name), Some(t), "{name}");
        }
    }

    #[test]
    fn truncated_safetensors_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        sample().write_safetensors(&p, None, None).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).expect("write");
        let err = StateDict::read(&p).expect_err("must fail").to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }

    #[test]
    fn unknown_format_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, b"hello world, not a checkpoint").expect("write");
        let err = StateDict::read(&p).expect_err("must fail").to_string();
        assert!(
            err.contains("notes.txt") && err.contains("neither"),
            "{err}"
        );
    }

    #[test]
    fn torchscript_archives_point_to_the_converter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ViT-B-32.pt");
        // A zip whose directory lists TorchScript's `constants.pkl`, as OpenAI's archives do.
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend_from_slice(b"....ViT-B-32/code/__torch__.py....ViT-B-32/constants.pkl....");
        std::fs::write(&p, &bytes).expect("write");
        let err = StateDict::read(&p).expect_err("must fail").to_string();
        assert!(
            err.contains("TorchScript") && err.contains("convert_openai_checkpoint.py"),
            "{err}"
        );
    }

    #[test]
    fn safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle() {
        let mut bytes = vec![0x80, 0, 0, 0, 0, 0, 0, 0, b'{'];
        bytes.extend_from_slice(&[b' '; 0x7f]);
        assert!(matches!(detect_format(&bytes), Format::Safetensors));
        assert!(matches!(
            detect_format(&[0x80, 0x02, 0x8a]),
            Format::LegacyPickle
        ));
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["x.10.w", "x.9.w", "x.1.w"];
        v.sort_by_key(|a| natural_key(a));
        assert_eq!(v, ["x.1.w", "x.9.w", "x.10.w"]);
    }
}
