//! The trainer: N CLIP fine-tuning runs from the same pretrained weights w0 with different
//! seeds (data order and augmentation), in lockstep, with the periodic Model Stock merge
//! (SPEC.md §2) and evaluation on ImageNet and its shifts, all driven by a resolved
//! [`RunPlan`].
//!
//! - [`session`]: w0, the runs (model + AdamW per seed and device), the data and eval sets;
//! - [`step`]: one optimizer step of every run ([`step::StepRunner`], also what `clipstock
//!   bench` times): micro-batch accumulation, global-norm clipping as PyTorch's
//!   `clip_grad_norm_`, AdamW with decoupled weight decay, f16's dynamic loss scale;
//! - `fused_adamw`: burn's AdamW, bit for bit, as one multi-threaded pass per tensor on flex;
//! - [`dist`] and [`grad_sync`]: training over several processes (MPI, in the binary): who
//!   trains which run, and the gradient all-reduce of a run that several processes share;
//! - `driver`: the loop ([`train`]);
//! - [`hooks`]: what happens at step and epoch boundaries ([`hooks::EpochHook`]: evaluation,
//!   the Model Stock merge, checkpoints);
//! - [`rundir`]: the run directory, its typed records and its reader;
//! - [`events`]: what the caller hears (the library never prints);
//! - `export`: the final checkpoints.
//!
//! Reproducibility: data order is `epoch_order(n, seed, epoch)` and every augmentation draws
//! from `sample_seed(seed, epoch, index)`, so the only state a resume needs is the step
//! position, the module and optimizer records and the last merge, all in each checkpoint.

pub mod compare;
pub mod dist;
mod driver;
mod error;
pub mod events;
mod export;
pub mod figures;
mod fused_adamw;
pub mod grad_sync;
pub mod hooks;
pub mod linear_probe;
mod optim_state;
pub mod rundir;
pub mod schedule;
pub mod session;
pub mod step;

pub use clipstock_config::RunPlan;
pub use driver::{Outcome, TrainOptions, train};
pub use error::{Result, TrainError};
pub use events::{Event, Observer, Quiet};
pub use hooks::state_refs;
pub use rundir::{EpochRow, RunReader, TrainerState};
pub use session::{autocast_of, build_w0, class_files};
