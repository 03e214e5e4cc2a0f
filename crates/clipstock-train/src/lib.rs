//! The trainer: N CLIP fine-tuning runs from the same pretrained weights w0 with different
//! seeds (data order and augmentation), in lockstep, with the periodic Model Stock merge
//! (SPEC.md §2) and evaluation on ImageNet and its shifts, all driven by a
//! [`clipstock_config::RunSpec`].
//!
//! Per optimizer step and run: `accumulation_steps` micro-batches (loss divided by their
//! number), global-norm gradient clipping as PyTorch's `clip_grad_norm_`, AdamW with decoupled
//! weight decay, learning rate from model-soups' warm-up + cosine schedule, per step. At each
//! merge point the runs' weights are merged against the anchor by `clipstock-merge` and written
//! back into every run through `clipstock_model::load::apply_state`, which keeps each run's
//! parameter ids and so its optimizer state.
//!
//! Reproducibility: data order is `epoch_order(n, seed, epoch)` and every augmentation draws
//! from `sample_seed(seed, epoch, index)`, so the only state a resume needs is the step
//! position, the module and optimizer records and the last merge, all in each checkpoint.
//!
//! The library never prints; it reports through [`Observer`] and `tracing`.

mod error;
mod optim_state;
mod rundir;
pub mod schedule;
pub mod step;
mod trainer;

pub use error::{Result, TrainError};
pub use rundir::{EpochRow, TrainerState};
pub use trainer::{
    Event, Observer, Outcome, Quiet, TrainOptions, autocast_of, build_w0, class_files,
    run_dir_models, state_refs, train,
};
