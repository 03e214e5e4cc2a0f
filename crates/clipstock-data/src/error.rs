//! The crate's one error type. Every variant names the file, folder or set involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Io(#[from] clipstock_tensors::IoError),

    // --- preprocessing (decode, resize, augmentation) ---
    #[error("cannot decode image `{path}`: {reason}")]
    Decode { path: PathBuf, reason: String },

    // --- layouts, class files, fixtures ---
    #[error("`{path}` is not a valid {what}: {reason}")]
    BadFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("{set}: not found under `{root}`{note}; tried {}", crate::layouts::show_paths(.tried))]
    SetNotFound {
        set: &'static str,
        root: PathBuf,
        /// Says when the data root itself is missing.
        note: &'static str,
        tried: Vec<PathBuf>,
    },

    /// `expect_published_sizes`: an incomplete or padded download would change the accuracy
    /// reported for the set without anyone noticing.
    #[error(
        "{set}: found {found} images under `{dir}`, but the published set has {published}; \
         complete the download, or accept it with `eval.expect_published_sizes = false` \
         (`clipstock eval --no-size-check`)"
    )]
    UnpublishedSize {
        set: &'static str,
        dir: PathBuf,
        found: usize,
        published: usize,
    },

    #[error("{set}: `{dir}` holds no images ({expected})")]
    NoImages {
        set: &'static str,
        dir: PathBuf,
        expected: &'static str,
    },

    #[error("{set}: folder `{dir}` {reason}")]
    ClassFolder {
        set: &'static str,
        dir: PathBuf,
        reason: String,
    },

    #[error(transparent)]
    UnknownSet(#[from] clipstock_config::UnknownSetName),

    // --- options ---
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}
