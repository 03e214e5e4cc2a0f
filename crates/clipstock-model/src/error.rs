use std::path::PathBuf;

/// Everything that can go wrong while reading, validating, building or writing a CLIP model.
///
/// Every variant names the file and/or tensor involved, because users meet these errors with a
/// multi-gigabyte checkpoint in hand and need to know which entry to look at.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The caller asked to stop (Ctrl-C) during long work such as building a zero-shot head.
    #[error("interrupted")]
    Cancelled,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path} is not a readable PyTorch checkpoint: {reason}")]
    Pytorch { path: PathBuf, reason: String },
    #[error(
        "{path} is a TorchScript archive (OpenAI's original .pt); convert it first with \
         `python scripts/convert_openai_checkpoint.py {path} out.safetensors`"
    )]
    TorchScript { path: PathBuf },
    #[error("{path} is neither a safetensors file nor a PyTorch checkpoint (first bytes: {magic})")]
    UnknownFormat { path: PathBuf, magic: String },
    #[error(
        "{path}: tensor `{name}` has unsupported dtype {dtype} (expected f32, f16, bf16 or f64)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: does not look like a CLIP checkpoint: {reason}")]
    NotClip { path: PathBuf, reason: String },
    #[error("{context}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        context: String,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{context}: unexpected tensor(s) not used by the model: {names}")]
    UnexpectedTensors { context: String, names: String },
    #[error("{context}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        context: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("device `{0}` is not compiled into this build (enable the cargo feature `{1}`)")]
    DeviceNotCompiled(String, &'static str),
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
