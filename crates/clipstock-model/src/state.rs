//! Host-side state dicts for the model: `clipstock-tensors`' burn-free [`StateDict`] core, plus
//! what only this crate can do: PyTorch pickles (through burn's `pytorch-reader`), detecting the
//! container from a file's first bytes, and errors as [`ModelError`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::path::Path;

use clipstock_tensors::TensorsError;
use clipstock_tensors::state::natural_key;
pub use clipstock_tensors::{DType, HostTensor, looks_like_safetensors};

use crate::error::{ModelError, Result};

/// An ordered collection of named tensors ([`clipstock_tensors::StateDict`], which it derefs
/// to), whose reading and writing report [`ModelError`]s and whose [`StateDict::read`] also
/// takes PyTorch checkpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict(clipstock_tensors::StateDict);

impl Deref for StateDict {
    type Target = clipstock_tensors::StateDict;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for StateDict {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<clipstock_tensors::StateDict> for StateDict {
    fn from(inner: clipstock_tensors::StateDict) -> Self {
        StateDict(inner)
    }
}

impl From<StateDict> for clipstock_tensors::StateDict {
    fn from(sd: StateDict) -> Self {
        sd.0
    }
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    /// The burn-free state dict inside.
    pub fn into_inner(self) -> clipstock_tensors::StateDict {
        self.0
    }

    /// Renames every key with `f`; keys mapped to `None` are dropped.
    pub fn rename(self, f: impl FnMut(&str) -> Option<String>) -> StateDict {
        StateDict(self.0.rename(f))
    }

    /// A state dict of zeros with the given shapes (tests and shape-only checks).
    pub fn zeros_like_shapes(shapes: &[(String, Vec<usize>)]) -> StateDict {
        StateDict(clipstock_tensors::StateDict::zeros_like_shapes(shapes))
    }

    /// Reads a checkpoint, detecting the container from its first bytes: safetensors
    /// (memory-mapped), a `torch.save` zip, or a legacy pickle.
    ///
    /// Every value is checked to be finite here, the one door weights enter by (checkpoints,
    /// head files, checkpoint restores), so a NaN is reported once by name instead of
    /// spreading silently through training or an export.
    pub fn read(path: &Path) -> Result<StateDict> {
        let state = Self::read_unchecked(path)?;
        if let Some(bad) = state.first_non_finite() {
            return Err(ModelError::NonFinite {
                path: path.to_path_buf(),
                name: bad.name.to_string(),
                index: bad.index,
                value: bad.value,
            });
        }
        Ok(state)
    }

    fn read_unchecked(path: &Path) -> Result<StateDict> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut head = Vec::with_capacity(9);
        (&mut file).take(9).read_to_end(&mut head).map_err(io)?;
        match detect_format(&head) {
            Format::Safetensors => Ok(StateDict(clipstock_tensors::StateDict::read_safetensors(
                path,
            )?)),
            Format::Zip => {
                if is_torchscript(&zip_tail(&mut file).map_err(io)?) {
                    return Err(ModelError::TorchScript {
                        path: path.to_path_buf(),
                    });
                }
                drop(file);
                Self::read_pytorch(path)
            }
            Format::LegacyPickle => {
                drop(file);
                Self::read_pytorch(path)
            }
            Format::Unknown => Err(ModelError::UnknownFormat {
                path: path.to_path_buf(),
                magic: head
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
        }
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
                PtDtype::BF16 => DType::BF16,
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
}

/// Writes `bytes` to `path` through a temporary sibling, fsync and a rename
/// ([`clipstock_tensors::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(clipstock_tensors::write_atomic(path, bytes)?)
}

/// Each file-layer error becomes the variant that has always reported it, so messages stay as
/// they were.
impl From<TensorsError> for ModelError {
    fn from(e: TensorsError) -> Self {
        match e {
            TensorsError::Io(clipstock_tensors::IoError { path, source, .. }) => {
                ModelError::Io { path, source }
            }
            TensorsError::Format { path, reason } => ModelError::Safetensors { path, reason },
            TensorsError::Read {
                tensor,
                file,
                source,
            } => ModelError::Safetensors {
                path: file.into(),
                reason: format!("cannot read tensor `{tensor}`: {source}"),
            },
            TensorsError::UnsupportedDtype {
                path,
                tensor,
                dtype,
            } => ModelError::UnsupportedDtype {
                path,
                name: tensor,
                dtype: dtype.to_string(),
            },
            TensorsError::MissingTensor { tensor, file } => ModelError::Invalid {
                context: file,
                reason: format!("no tensor `{tensor}`"),
            },
            TensorsError::NotFloat {
                tensor,
                file,
                dtype,
            } => ModelError::Invalid {
                context: file,
                reason: format!("tensor `{tensor}` is {dtype}, not a float"),
            },
            TensorsError::Write { path, source } => ModelError::Write {
                path,
                reason: source.to_string(),
            },
        }
    }
}

enum Format {
    Safetensors,
    Zip,
    LegacyPickle,
    Unknown,
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

/// The last MiB of a zip, where its central directory (the list of member names) sits.
fn zip_tail(file: &mut File) -> std::io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(tail)
}

/// TorchScript archives hold `constants.pkl` and `code/` next to `data.pkl`; plain
/// `torch.save` zips never do.
fn is_torchscript(tail: &[u8]) -> bool {
    let needle = b"constants.pkl";
    tail.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's reader detects safetensors by their first bytes and hands them to
    /// `clipstock-tensors` (whose own tests cover dtypes and bytes); this checks the hand-off
    /// both ways: a good file comes back whole, a cut one is a `ModelError` naming the file.
    #[test]
    fn safetensors_are_detected_read_back_and_truncation_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        let mut sd = StateDict::new();
        sd.insert("b", HostTensor::new(vec![2], DType::F16, vec![1.5, -2.0]));
        sd.insert(
            "a",
            HostTensor::new(vec![1, 2], DType::BF16, vec![0.25, 3.0]),
        );
        sd.insert("s", HostTensor::new(vec![], DType::F32, vec![4.6052]));
        sd.write_safetensors(&p, None, None).expect("write");
        let back = StateDict::read(&p).expect("read");
        assert_eq!(back.names().collect::<Vec<_>>(), ["a", "b", "s"]);
        assert!(sd.iter().all(|(name, t)| back.get(name) == Some(t)));

        let mut bytes = std::fs::read(&p).expect("read");
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, bytes).expect("write");
        match StateDict::read(&p) {
            Err(e @ ModelError::Safetensors { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("x.safetensors"), "{msg}");
                assert!(msg.contains("not a valid safetensors"), "{msg}");
            }
            other => panic!("a cut file must be a safetensors error: {other:?}"),
        }
    }

    /// The message of reading `bytes` saved as `name`, which must fail.
    fn read_error(name: &str, bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        StateDict::read(&p).expect_err("must fail").to_string()
    }

    #[test]
    fn unknown_format_names_the_file() {
        let err = read_error("notes.txt", b"hello world, not a checkpoint");
        assert!(
            err.contains("notes.txt") && err.contains("neither"),
            "{err}"
        );
    }

    #[test]
    fn torchscript_archives_point_to_the_converter() {
        // A zip whose directory lists TorchScript's `constants.pkl`, as OpenAI's archives do.
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend_from_slice(b"....ViT-B-32/code/__torch__.py....ViT-B-32/constants.pkl....");
        let err = read_error("ViT-B-32.pt", &bytes);
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
    fn write_errors_keep_the_model_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("missing/dir/x.safetensors");
        let mut sd = StateDict::new();
        sd.insert("w", HostTensor::new(vec![1], DType::F32, vec![1.0]));
        // Model code writes through `?`, which makes the file layer's error a `ModelError`.
        let err = ModelError::from(sd.write_safetensors(&p, None, None).expect_err("no dir"));
        assert!(matches!(err, ModelError::Write { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot write ") && msg.contains("x.safetensors"),
            "{msg}"
        );
    }
}
