//! Reading safetensors files: the header is parsed and validated up front, the data is touched
//! only when a tensor slice is asked for, either borrowed from a memory mapping or read with
//! positioned reads into the caller's buffer. That is what lets a merge of multi-GB checkpoints
//! run in a few MB of working memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, decode_into};
use crate::error::{IoError, Result, TensorsError};
use crate::source::{Catalog, Source};

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

enum Backing {
    Mapped(Mmap),
    Reader(File),
}

/// A safetensors file opened for streaming reads.
pub struct SafetensorsFile {
    path: PathBuf,
    catalog: Catalog,
    /// Absolute byte offset of each tensor's data, parallel to the catalog's tensors.
    starts: Vec<u64>,
    metadata: BTreeMap<String, String>,
    backing: Backing,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors().len())
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
        let io = |action, source| TensorsError::from(IoError::new(action, path, source));
        let fmt = |reason: String| TensorsError::Format {
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
        let (entries, metadata) = parse_header(&header, data_start, file_len).map_err(fmt)?;
        let (tensors, starts): (Vec<TensorInfo>, Vec<u64>) = entries.into_iter().unzip();
        // A JSON object's keys are unique, so the catalog cannot refuse them.
        let catalog = Catalog::new(path.display().to_string(), tensors)
            .map_err(|name| fmt(format!("tensor `{name}` appears twice")))?;

        let backing = match mode {
            ReadMode::Read => Backing::Reader(file),
            ReadMode::Mmap => Backing::Mapped(map_file(&file).map_err(|e| io("map", e))?),
            ReadMode::Auto => match map_file(&file) {
                Ok(m) => Backing::Mapped(m),
                Err(_) => Backing::Reader(file),
            },
        };
        if let Backing::Mapped(m) = &backing {
            // Readers walk each tensor front to back; telling the kernel lets it read ahead on
            // a cold cache. Purely a hint: ignore failures.
            let _ = m.advise(memmap2::Advice::Sequential);
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            catalog,
            starts,
            metadata,
            backing,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.find(name).map(|i| &self.tensors()[i])
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether the data is memory-mapped (false: read with positioned reads).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    fn read_err(&self, idx: usize) -> impl FnOnce(std::io::Error) -> TensorsError + '_ {
        move |source| TensorsError::Read {
            tensor: self.tensors()[idx].name.clone(),
            file: self.label().to_owned(),
            source,
        }
    }

    /// Reads a whole float tensor as f32 (for inspection and tests; merges stream).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let idx = self.find(name).ok_or_else(|| TensorsError::MissingTensor {
            tensor: name.to_string(),
            file: self.label().to_owned(),
        })?;
        self.read_f32_at(idx)
    }

    /// Reads float tensor `idx` whole as f32.
    pub fn read_f32_at(&self, idx: usize) -> Result<Vec<f32>> {
        let info = &self.tensors()[idx];
        if !info.dtype.is_float() {
            return Err(TensorsError::NotFloat {
                tensor: info.name.clone(),
                file: self.label().to_owned(),
                dtype: info.dtype,
            });
        }
        let mut scratch = Vec::new();
        let bytes = self.bytes(idx, 0..info.byte_len(), &mut scratch)?;
        let mut out = vec![0f32; info.numel()];
        decode_into(info.dtype, bytes, &mut out);
        Ok(out)
    }
}

// Bytes and slices are served straight from the mapping when there is one; the positioned-read
// path fills the caller's scratch buffer instead.
impl Source for SafetensorsFile {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn bytes<'a>(&'a self, i: usize, at: Range<usize>, tmp: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        debug_assert!(at.end <= self.tensors()[i].byte_len());
        // Offsets were validated against the file length when the header was parsed.
        let abs = self.starts[i] as usize + at.start;
        let len = at.len();
        match &self.backing {
            Backing::Mapped(m) => Ok(&m[abs..abs + len]),
            Backing::Reader(f) => {
                tmp.resize(len, 0);
                read_exact_at(f, tmp, abs as u64).map_err(self.read_err(i))?;
                Ok(&tmp[..])
            }
        }
    }

    fn mapped_bytes(&self, i: usize, at: Range<usize>) -> Option<&[u8]> {
        debug_assert!(at.end <= self.tensors()[i].byte_len());
        let abs = self.starts[i] as usize + at.start;
        match &self.backing {
            Backing::Mapped(m) => Some(&m[abs..abs + at.len()]),
            Backing::Reader(_) => None,
        }
    }

    fn f32s<'a>(&'a self, i: usize, at: Range<usize>, tmp: &'a mut Vec<f32>) -> Result<&'a [f32]> {
        let info = &self.tensors()[i];
        let size = info.dtype.size();
        let abs = self.starts[i] as usize + at.start * size;
        let len = at.len();
        let native_f32 = info.dtype == DType::F32 && cfg!(target_endian = "little");
        match &self.backing {
            Backing::Mapped(m) => {
                let bytes = &m[abs..abs + len * size];
                if native_f32 && let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    return Ok(v);
                }
                tmp.resize(len, 0.0);
                decode_into(info.dtype, bytes, &mut tmp[..len]);
                Ok(&tmp[..len])
            }
            Backing::Reader(f) => {
                tmp.resize(len, 0.0);
                if native_f32 {
                    // Read straight into the f32 buffer: no intermediate byte copy.
                    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut tmp[..len]);
                    read_exact_at(f, dst, abs as u64).map_err(self.read_err(i))?;
                } else {
                    let mut bytes = vec![0u8; len * size];
                    read_exact_at(f, &mut bytes, abs as u64).map_err(self.read_err(i))?;
                    decode_into(info.dtype, &bytes, &mut tmp[..len]);
                }
                Ok(&tmp[..len])
            }
        }
    }
}

/// A validated header: entries in storage order with their absolute data offsets, and the
/// `__metadata__` map.
type ParsedHeader = (Vec<(TensorInfo, u64)>, BTreeMap<String, String>);

/// Parses and validates a header. `data_start` is the absolute offset of the data section.
fn parse_header(header: &[u8], data_start: u64, file_len: u64) -> Result<ParsedHeader, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(TensorInfo, u64, u64)> = Vec::with_capacity(map.len());
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
            },
            data_start + begin,
            end - begin,
        ));
    }
    // Storage order is the order that reading front to back follows; it is also the only order
    // a safetensors file keeps (the JSON object itself is unordered).
    entries.sort_by_key(|(_, start, _)| *start);
    let mut expect = data_start;
    for (t, start, len) in &entries {
        if *start != expect {
            return Err(format!(
                "tensor `{}` starts at data offset {} but the previous tensor ends at {}: the \
                 data section has a gap or an overlap",
                t.name,
                start - data_start,
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
    Ok((
        entries
            .into_iter()
            .map(|(t, start, _)| (t, start))
            .collect(),
        metadata,
    ))
}

/// Maps `file` read-only.
///
/// `Mmap::map` is unsafe because the mapped bytes change (or the process gets SIGBUS) if another
/// process modifies or truncates the file while it is mapped. That is sound enough here: the
/// mapping is read-only, lives only as long as one reader, checkpoints are not rewritten in
/// place by anything we know of ([`crate::AtomicFile`] replaces files by rename, which leaves a
/// mapped inode intact), and [`ReadMode::Read`] avoids mapping for anyone who cannot promise it.
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
