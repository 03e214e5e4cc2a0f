//! The one error type of the crate. Every variant names the file and/or the tensor involved,
//! because a merge touches hundreds of tensors in several files and "shape mismatch" alone
//! would leave the user guessing which of them is wrong.

use std::path::PathBuf;

use clipstock_tensors::TensorsError;

use crate::dtype::DType;

/// Errors of merging, reading and writing.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Io(#[from] clipstock_tensors::IoError),

    #[error("`{path}` is not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A tensor's data failed to read (the file layer's `TensorsError::Read`, which names the
    /// tensor and the file).
    #[error(transparent)]
    Read(TensorsError),

    #[error("{method} needs at least {need} fine-tuned model(s), got {got}")]
    TooFewModels {
        method: &'static str,
        need: usize,
        got: usize,
    },

    #[error("{method} needs an anchor (the pretrained weights w0), none was given")]
    MissingAnchor { method: &'static str },

    #[error("tensor `{tensor}` is in `{present_in}` but missing from `{missing_from}`")]
    MissingTensor {
        tensor: String,
        present_in: String,
        missing_from: String,
    },

    #[error(
        "tensor `{tensor}` has shape {shape_a:?} in `{file_a}` but shape {shape_b:?} in `{file_b}`"
    )]
    ShapeMismatch {
        tensor: String,
        file_a: String,
        shape_a: Box<[usize]>,
        file_b: String,
        shape_b: Box<[usize]>,
    },

    #[error(
        "tensor `{tensor}` is {dtype_a} in `{file_a}` but {dtype_b} in `{file_b}`; only float \
         dtypes (F64, F32, F16, BF16) may differ between inputs"
    )]
    DtypeMismatch {
        tensor: String,
        file_a: String,
        dtype_a: DType,
        file_b: String,
        dtype_b: DType,
    },

    #[error(
        "tensor `{tensor}` is {dtype}, not a float, and differs between `{file_a}` and `{file_b}`; \
         non-float tensors are copied, so they must be identical in every input"
    )]
    NonFloatDiffers {
        tensor: String,
        dtype: DType,
        file_a: String,
        file_b: String,
    },

    #[error(
        "tensor `{tensor}` in `{file}` holds a non-finite value ({value}) at flat index {index}"
    )]
    NonFinite {
        tensor: String,
        file: String,
        index: usize,
        value: f32,
    },

    #[error(
        "merged tensor `{tensor}` is not finite (ratio t = {t}); the inputs are finite, so the \
         extrapolation overflowed: use clamp_t or exclude the tensor"
    )]
    NonFiniteOutput { tensor: String, t: f64 },

    #[error(
        "tensor `{tensor}` from `{file}` holds {got} values but its shape {shape:?} needs {expected}"
    )]
    LengthMismatch {
        tensor: String,
        file: String,
        shape: Box<[usize]>,
        expected: usize,
        got: usize,
    },

    #[error("tensor `{tensor}` appears twice in `{file}`")]
    DuplicateTensor { tensor: String, file: String },

    #[error("invalid {what} pattern `{pattern}`: {reason}")]
    Pattern {
        what: &'static str,
        pattern: String,
        reason: String,
    },

    #[error("{what} pattern `{pattern}` matches no tensor in `{file}`")]
    UnmatchedPattern {
        what: &'static str,
        pattern: String,
        file: String,
    },

    #[error("the output `{path}` is also one of the inputs; choose another output path")]
    OutputIsInput { path: PathBuf },

    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Each file-layer error becomes the variant that has always reported it, so messages (and
/// matches on variants) stay as they were.
impl From<TensorsError> for MergeError {
    fn from(e: TensorsError) -> Self {
        match e {
            TensorsError::Io(e) => MergeError::Io(e),
            TensorsError::Format { path, reason } => MergeError::Format { path, reason },
            e @ TensorsError::Read { .. } => MergeError::Read(e),
            TensorsError::Write { path, source } => MergeError::Write { path, source },
            TensorsError::MissingTensor { tensor, file } => MergeError::MissingTensor {
                tensor,
                present_in: "the request".to_string(),
                missing_from: file,
            },
            TensorsError::NotFloat {
                tensor,
                file,
                dtype,
            } => MergeError::InvalidOption(format!(
                "tensor `{tensor}` in `{file}` is {dtype}, not a float"
            )),
            // The merge reads tensors of every dtype; only state dicts refuse some.
            TensorsError::UnsupportedDtype {
                path,
                tensor,
                dtype,
            } => MergeError::Format {
                path,
                reason: format!("tensor `{tensor}` has unsupported dtype {dtype}"),
            },
        }
    }
}

pub type Result<T, E = MergeError> = std::result::Result<T, E>;
