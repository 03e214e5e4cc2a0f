//! The trainer's errors. Each names the file, run, epoch or step involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Io(#[from] clipstock_tensors::IoError),

    #[error(transparent)]
    Config(#[from] clipstock_config::ConfigError),

    #[error(transparent)]
    Model(#[from] clipstock_model::ModelError),

    #[error(transparent)]
    Data(#[from] clipstock_data::DataError),

    #[error(transparent)]
    Eval(#[from] clipstock_eval::EvalError),

    #[error("merge at epoch {epoch}, step {step}: {source}")]
    Merge {
        epoch: u64,
        step: u64,
        #[source]
        source: clipstock_merge::MergeError,
    },

    #[error("checkpoint `{path}`: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error(
        "run directory `{0}` already exists; pass --resume to continue it, or choose another run.name"
    )]
    RunExists(PathBuf),

    /// Another live process has the run directory open (start or `--resume`).
    #[error(
        "run directory `{}` is in use by {}; wait for it to finish or stop it first",
        path.display(),
        match pid { Some(p) => format!("another clipstock process (PID {p})"),
                    None => "another clipstock process".to_string() }
    )]
    RunLocked { path: PathBuf, pid: Option<u32> },

    #[error("--resume: `{0}` holds no complete checkpoint")]
    NothingToResume(PathBuf),

    #[error(
        "`{0}` has no held-out split (holdout.txt): train with data.holdout_per_class or \
         data.holdout_file to have one"
    )]
    NoHoldout(PathBuf),

    #[error("compare: {0}")]
    Compare(String),

    #[error("distributed training: {0}")]
    Distributed(String),

    #[error("cannot render the figure `{path}`: {reason}")]
    Figure { path: PathBuf, reason: String },

    /// A merge outside training (the comparison's soups and interpolations).
    #[error("compare: {0}")]
    CompareMerge(#[from] clipstock_merge::MergeError),

    #[error(
        "{run}: {what} is not finite at epoch {epoch}, step {step}; training \
         stopped, the last good checkpoint is kept (lower optim.lr or enable optim.grad_clip_norm)"
    )]
    NonFinite {
        /// The run's label (`run 1 (seed 1)`, `independent 1 (seed 11)`).
        run: String,
        seed: u64,
        what: &'static str,
        epoch: u64,
        step: u64,
    },

    /// `--resume` with a config that differs from the one the run was started with.
    #[error(
        "the config differs from the run's `{}` in {} key(s):\n  {}\nresume with the config \
         and --set overrides the run was started with, or with `clipstock train --resume --run \
         DIR` (the run's own config)",
        stored.display(),
        differences.len(),
        differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    ConfigChanged {
        stored: PathBuf,
        differences: Vec<clipstock_config::KeyDiff>,
    },

    #[error(
        "data.image_size = {configured}, but the model's positional embedding is for {model} px \
         inputs; leave data.image_size unset or set it to {model}"
    )]
    ImageSize { configured: u32, model: u32 },

    #[error(
        "the train set has {images} images, fewer than one batch (optim.batch_size = {batch_size})"
    )]
    TrainSetTooSmall { images: usize, batch_size: usize },

    /// The head (built from `model.classnames`, or the checkpoint's or file's) and the
    /// dataset's class list disagree.
    #[error("{head} has {head_classes} classes but the dataset's class list has {dataset_classes}")]
    ClassCount {
        head: String,
        head_classes: usize,
        dataset_classes: usize,
    },

    #[error(
        "optim.precision = \"{precision}\": {key} = \"{device}\" reports no {dtype} arithmetic; \
         use \"f32\" there, or a device that has it (flex on the CPU; CUDA; wgpu where the \
         adapter supports the type, e.g. f16 with shader-f16)"
    )]
    PrecisionUnsupported {
        precision: &'static str,
        key: String,
        device: String,
        dtype: String,
    },

    #[error("averaging optimizer state: {0}")]
    OptimizerAverage(String),

    /// A stop request (Ctrl-C) arrived during an evaluation; the caller checkpoints.
    #[error("interrupted")]
    Interrupted,
    /// A stop request arrived while the run was being set up (zero-shot head, evaluation
    /// sets): nothing was trained, so there is nothing to checkpoint.
    #[error(
        "interrupted while setting up, before the first step: {}",
        if *resume { "checkpoints and metrics are unchanged; --resume again to continue" }
        else { "nothing was saved (no run directory left behind)" }
    )]
    InterruptedBeforeStart { resume: bool },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let at = clipstock_tensors::IoError::at(action, &path.into());
    move |source| TrainError::Io(at(source))
}
