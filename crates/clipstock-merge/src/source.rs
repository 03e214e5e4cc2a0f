//! Inputs of a merge: safetensors files (memory-mapped, or read piecewise with positioned reads)
//! and in-memory f32 tensors. The engine sees both through the [`Source`] trait and only ever
//! asks for a slice of one tensor at a time, which is what keeps a merge of multi-GB checkpoints
//! at a few MB of working memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, decode_into};
use crate::error::{MergeError, Result};

/// A header longer than this is certainly not a checkpoint header (the `safetensors` crate uses
/// the same bound); refusing it early avoids allocating whatever a corrupt length says.
const MAX_HEADER: u64 = 100_000_000;

/// How a safetensors file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Memory-map, and fall back to positioned reads if mapping fails (e.g. on file systems
    /// that do not support it).
    #[default]
    Auto,
    /// Memory-map only. The file must not be modified or truncated while it is mapped.
    Mmap,
    /// Positioned reads into small buffers; never maps.
    Read,
}

/// Name, dtype and shape of one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    start: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of data bytes.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

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

enum Backing {
    Mapped(Mmap),
    Reader(File),
}

/// A safetensors file opened for streaming: the header is parsed and validated up front, the
/// data is touched only when a tensor slice is requested.
pub struct SafetensorsFile {
    path: PathBuf,
    label: String,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    backing: Backing,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

impl SafetensorsFile {
    /// Opens and validates `path`: header length, JSON, dtypes, that each tensor's byte range
    /// matches its shape, that the ranges tile the data section, and that the file is exactly
    /// as long as the header says (a shorter file is reported as truncated).
    pub fn open(path: &Path, mode: ReadMode) -> Result<SafetensorsFile> {
        let io = |action, source| MergeError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let fmt = |reason: String| MergeError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let file_len = file.metadata().map_err(|e| io("stat", e))?.len();
        if file_len < 8 {
            return Err(fmt(format!(
                "the file has {file_len} bytes, fewer than the 8-byte header length (truncated?)"
            )));
        }
        let mut len_bytes = [0u8; 8];
        read_exact_at(&file, &mut len_bytes, 0).map_err(|e| io("read", e))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER {
            return Err(fmt(format!(
                "header length {header_len} is implausibly large (not a safetensors file?)"
            )));
        }
        if 8 + header_len > file_len {
            return Err(fmt(format!(
                "the header needs {} bytes but the file has only {file_len} (truncated?)",
                8 + header_len
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        read_exact_at(&file, &mut header, 8).map_err(|e| io("read", e))?;
        let data_start = 8 + header_len;
        let (tensors, metadata) = parse_header(&header, data_start, file_len).map_err(fmt)?;

        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            index.insert(t.name.clone(), i);
        }

        let backing = match mode {
            ReadMode::Read => Backing::Reader(file),
            ReadMode::Mmap => Backing::Mapped(map_file(&file).map_err(|e| io("map", e))?),
            ReadMode::Auto => match map_file(&file) {
                Ok(m) => Backing::Mapped(m),
                Err(_) => Backing::Reader(file),
            },
        };
        if let Backing::Mapped(m) = &backing {
            // The engine walks each tensor front to back; telling the kernel lets it read ahead
            // on a cold cache. Purely a hint: ignore failures.
            let _ = m.advise(memmap2::Advice::Sequential);
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            label: path.display().to_string(),
            tensors,
            index,
            metadata,
            backing,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in storage (data offset) order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether the data is memory-mapped (false: read with positioned reads).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// Reads a whole float tensor as f32 (for inspection and tests; the merge itself streams).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let idx = self
            .index
            .get(name)
            .copied()
            .ok_or_else(|| MergeError::MissingTensor {
                tensor: name.to_string(),
                present_in: "the request".to_string(),
                missing_from: self.label.clone(),
            })?;
        let info = &self.tensors[idx];
        if !info.dtype.is_float() {
            return Err(MergeError::InvalidOption(format!(
                "tensor `{name}` in `{}` is {}, not a float",
                self.label, info.dtype
            )));
        }
        let mut out = vec![0f32; info.numel()];
        Source::read_f32(self, idx, 0, &mut out)?;
        Ok(out)
    }
}

impl Source for SafetensorsFile {
    fn label(&self) -> &str {
        &self.label
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn bytes<'a>(
        &'a self,
        idx: usize,
        byte_start: usize,
        len: usize,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let info = &self.tensors[idx];
        debug_assert!(byte_start + len <= info.byte_len());
        // Offsets were validated against the file length when the header was parsed.
        let abs = info.start as usize + byte_start;
        match &self.backing {
            Backing::Mapped(m) => Ok(&m[abs..abs + len]),
            Backing::Reader(f) => {
                scratch.resize(len, 0);
                read_exact_at(f, scratch, abs as u64).map_err(|source| MergeError::Read {
                    tensor: info.name.clone(),
                    file: self.label.clone(),
                    source,
                })?;
                Ok(&scratch[..])
            }
        }
    }

    fn mapped_bytes(&self, idx: usize, byte_start: usize, len: usize) -> Option<&[u8]> {
        let info = &self.tensors[idx];
        debug_assert!(byte_start + len <= info.byte_len());
        let abs = info.start as usize + byte_start;
        match &self.backing {
            Backing::Mapped(m) => Some(&m[abs..abs + len]),
            Backing::Reader(_) => None,
        }
    }

    fn f32s<'a>(
        &'a self,
        idx: usize,
        start: usize,
        len: usize,
        buf: &'a mut Vec<f32>,
    ) -> Result<&'a [f32]> {
        let info = &self.tensors[idx];
        let size = info.dtype.size();
        let abs = info.start as usize + start * size;
        let native_f32 = info.dtype == DType::F32 && cfg!(target_endian = "little");
        match &self.backing {
            Backing::Mapped(m) => {
                let bytes = &m[abs..abs + len * size];
                if native_f32 && let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    return Ok(v);
                }
                buf.resize(len, 0.0);
                decode_into(info.dtype, bytes, &mut buf[..len]);
                Ok(&buf[..len])
            }
            Backing::Reader(f) => {
                let rerr = |source| MergeError::Read {
                    tensor: info.name.clone(),
                    file: self.label.clone(),
                    source,
                };
                buf.resize(len, 0.0);
                if native_f32 {
                    // Read straight into the f32 buffer: no intermediate byte copy.
                    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[..len]);
                    read_exact_at(f, dst, abs as u64).map_err(rerr)?;
                } else {
                    let mut bytes = vec![0u8; len * size];
                    read_exact_at(f, &mut bytes, abs as u64).map_err(rerr)?;
                    decode_into(info.dtype, &bytes, &mut buf[..len]);
                }
                Ok(&buf[..len])
            }
        }
    }
}

/// Parses and validates a header. `data_start` is the absolute offset of the data section.
fn parse_header(
    header: &[u8],
    data_start: u64,
    file_len: u64,
) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>), String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(TensorInfo, u64)> = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            let m: BTreeMap<String, String> = serde_json::from_value(value)
                .map_err(|e| format!("`__metadata__` is not a string map: {e}"))?;
            metadata = m;
            continue;
        }
        let raw: RawEntry = serde_json::from_value(value)
            .map_err(|e| format!("header entry of tensor `{name}`: {e}"))?;
        let dtype = DType::from_safetensors_name(&raw.dtype)
            .ok_or_else(|| format!("tensor `{name}` has unknown dtype `{}`", raw.dtype))?;
        let [begin, end] = raw.data_offsets;
        let numel = raw
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let need = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        if end < begin || Some(end - begin) != need {
            return Err(format!(
                "tensor `{name}` ({dtype}, shape {:?}) has data_offsets [{begin}, {end}], which do \
                 not match its size",
                raw.shape
            ));
        }
        entries.push((
            TensorInfo {
                name,
                dtype,
                shape: raw.shape,
                start: data_start + begin,
            },
            end - begin,
        ));
    }
    // Storage order is the order that reading front to back follows; it is also the only order
    // a safetensors file keeps (the JSON object itself is unordered).
    entries.sort_by_key(|(t, _)| t.start);
    let mut expect = data_start;
    for (t, len) in &entries {
        if t.start != expect {
            return Err(format!(
                "tensor `{}` starts at data offset {} but the previous tensor ends at {}: the \
                 data section has a gap or an overlap",
                t.name,
                t.start - data_start,
                expect - data_start
            ));
        }
        expect += len;
    }
    if expect > file_len {
        return Err(format!(
            "the header describes {expect} bytes but the file has only {file_len} (truncated?)"
        ));
    }
    if expect < file_len {
        return Err(format!(
            "the file has {} bytes after the last tensor (corrupt or concatenated?)",
            file_len - expect
        ));
    }
    Ok((entries.into_iter().map(|(t, _)| t).collect(), metadata))
}

/// Maps `file` read-only.
///
/// `Mmap::map` is unsafe because the mapped bytes change (or the process gets SIGBUS) if another
/// process modifies or truncates the file while it is mapped. That is sound enough here: the
/// mapping is read-only, lives only for one merge, checkpoints are not rewritten in place by
/// anything we know of (our own writer replaces files by rename, which leaves a mapped inode
/// intact), and [`ReadMode::Read`] avoids mapping for anyone who cannot promise it.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: see the function documentation; the file is not modified while mapped.
    unsafe { Mmap::map(file) }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
                start: 0,
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
