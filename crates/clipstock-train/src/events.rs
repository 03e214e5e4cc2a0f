//! What the trainer tells its caller, to draw progress: typed values, never pre-formatted
//! text (the library never prints; the binary decides how an event looks).

use std::path::PathBuf;

use clipstock_data::layouts::SetName;
use clipstock_eval::EvalResults;
use clipstock_merge::MergeSummary;

#[derive(Debug, Clone)]
pub enum Event {
    /// The run directory exists (created, or opened to resume); everything after this is
    /// about that run.
    Started {
        run_dir: PathBuf,
    },
    /// A set-up or shut-down phase, in words (`loading …`, `stopping: saving a checkpoint`).
    Phase(String),
    EpochStart {
        /// 0-based.
        epoch: u64,
        epochs: u64,
        steps: u64,
        /// Steps already done (a resume mid-epoch).
        start_step: u64,
    },
    Step {
        epoch: u64,
        /// Steps done in the epoch, 1-based.
        step: u64,
        global_step: u64,
        losses: Vec<f64>,
        lr: f64,
        images_per_sec: f64,
    },
    EvalSet {
        model: String,
        set: SetName,
        images: usize,
    },
    EvalProgress {
        done: usize,
    },
    EvalDone {
        model: String,
        results: EvalResults,
    },
    Merged {
        /// 1-based.
        epoch: u64,
        /// Boxed: far larger than the other events.
        summary: Box<MergeSummary>,
    },
    Checkpoint(PathBuf),
}

pub trait Observer {
    fn on(&mut self, event: Event);
}

/// A no-op observer (tests, `eval --run`).
pub struct Quiet;

impl Observer for Quiet {
    fn on(&mut self, _event: Event) {}
}
