//! The crate's error type. Every variant names the file and, where there is one, the tensor:
//! checkpoints hold hundreds of tensors and users need to know which entry to look at.
//! The model and merge crates map these variants onto their own, whose messages their users
//! and tests know.

use std::path::PathBuf;

use crate::dtype::DType;

#[derive(Debug, thiserror::Error)]
pub enum TensorsError {
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

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
