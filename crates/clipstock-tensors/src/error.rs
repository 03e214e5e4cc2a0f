//! The crate's error type. Every variant names the file and, where there is one, the tensor:
//! checkpoints hold hundreds of tensors and users need to know which entry to look at.
//! The model and merge crates map these variants onto their own, whose messages their users
//! and tests know.

use std::path::{Path, PathBuf};

use crate::dtype::DType;

/// A failed filesystem call: what was attempted, on which path, and the OS error. Every crate
/// that touches files wraps this one type (`#[error(transparent)]`), so the message reads the
/// same whichever layer the failure surfaced in.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} `{path}`: {source}")]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        IoError {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// For `map_err`: `fs::read(p).map_err(IoError::at("read", p))?`.
    pub fn at(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IoError + use<> {
        let path = path.to_path_buf();
        move |source| IoError {
            action,
            path,
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TensorsError {
    #[error(transparent)]
    Io(#[from] IoError),

    #[error("`{path}` is not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },

    #[error("cannot read tensor `{tensor}` from `{file}`: {source}")]
    Read {
        tensor: String,
        file: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "`{path}`: tensor `{tensor}` has unsupported dtype {dtype} (expected F32, F16, BF16 or F64)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: DType,
    },

    #[error("tensor `{tensor}` is not in `{file}`")]
    MissingTensor { tensor: String, file: String },

    #[error("tensor `{tensor}` in `{file}` is {dtype}, not a float")]
    NotFloat {
        tensor: String,
        file: String,
        dtype: DType,
    },

    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = TensorsError> = std::result::Result<T, E>;
